//! Secrets out of logs: an endpoint URL as it may be logged, with any user
//! information (`user:password@`) replaced by `***@`. Every log line and
//! error message that shows an endpoint goes through [`url`].

/// `s` with the user information of its authority replaced by `***`.
/// Works on anything URL-shaped, parsed or not, so even an invalid
/// endpoint in an error message loses its credentials.
pub fn url(s: &str) -> String {
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}***@{}{tail}", &authority[at + 1..]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            url("http://user:pw@host:4318/v1/metrics"),
            "http://***@host:4318/v1/metrics"
        );
        assert_eq!(url("http://user@host"), "http://***@host");
        assert_eq!(url("http://a:b@c@host:1"), "http://***@host:1");
        assert_eq!(url("user:pw@host:4318"), "***@host:4318");
    }

    #[test]
    fn the_rest_is_untouched() {
        for s in [
            "http://host:4318",
            "http://host:4318/p@th?q=a@b#f@g",
            "http://[::1]:4318/",
            "",
            "not a url",
        ] {
            assert_eq!(url(s), s);
        }
    }
}
