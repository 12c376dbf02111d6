//! The web configuration file (`--web.config.file`), in the Prometheus
//! exporter-toolkit format (prometheus/exporter-toolkit
//! `docs/web-configuration.md`), so that a file written for node_exporter
//! or ebpf_exporter works here unchanged:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths: from the file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! http_server_config:
//!   headers: {X-Frame-Options: deny}
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt
//! rate_limit: {interval: 100ms, burst: 10}
//! ```
//!
//! Parsing is strict like the toolkit's `yaml.UnmarshalStrict`: an unknown
//! key is an error. Every key of the format is accepted; where rustls
//! cannot do what Go's crypto/tls does, the file is refused with the reason
//! rather than served differently (see [`validate`]).
//!
//! This file is pure (text in, typed settings out) so the fuzz target can
//! drive it; reading the referenced files and building the rustls
//! configuration is in `tls.rs`.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::vocab::bounded;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct WebFile {
    pub tls_server_config: TlsServerConfig,
    pub http_server_config: HttpServerConfig,
    pub basic_auth_users: BTreeMap<String, String>,
    pub rate_limit: RateLimitConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsServerConfig {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub cert_file: String,
    pub key_file: String,
    pub client_auth_type: String,
    pub client_ca_file: String,
    pub client_allowed_sans: Option<Vec<String>>,
    pub cipher_suites: Vec<String>,
    pub curve_preferences: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpServerConfig {
    /// Accepted for compatibility; edgewatch serves HTTP/1.1 only (HTTP/2
    /// is optional in the format and cannot change on the fly there either).
    pub http2: Option<bool>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RateLimitConfig {
    /// A Go duration ("100ms", "1s", "1m30s"); 0 or absent disables.
    pub interval: Option<String>,
    pub burst: u32,
}

/// Where the PEM data of one item comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    /// A path, relative to the web configuration file's directory when
    /// not absolute.
    File(String),
    Inline(String),
}

/// How the server treats client certificates (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Ask, accept anything (even none). Insecure, as in the toolkit.
    RequestClientCert,
    /// Require one, do not verify it. Insecure, as in the toolkit.
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// TLS protocol versions rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// TLS 1.2 cipher suites rustls implements, by their Go (= IANA) names.
/// Go's list also has CBC and RSA-key-exchange suites, which rustls does
/// not implement; naming one is an error.
pub const CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's suite names that rustls does not implement (CBC, RSA key exchange,
/// 3DES, RC4): named so the error can say "not supported" instead of
/// "unknown".
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
];

/// Key-exchange groups (Go's `curve_preferences` names) rustls's ring
/// provider implements.
pub const CURVES: &[&str] = &["X25519", "CurveP256", "CurveP384"];

/// Headers the format allows, with their allowed values (empty: any), as
/// in the toolkit's `extraHTTPHeaders`.
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// The TLS part, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Empty: rustls's defaults.
    pub cipher_suites: Vec<&'static str>,
    pub curves: Vec<&'static str>,
    pub prefer_server_cipher_suites: bool,
}

/// A validated web configuration: what the server enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSpec {
    pub tls: Option<TlsSpec>,
    /// user -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Response headers, already checked against the allowed set.
    pub headers: Vec<(String, String)>,
    /// One request per `interval`, bursts of `burst`.
    pub rate_limit: Option<(Duration, u32)>,
}

/// Parses the file's text strictly: every unknown key is reported with its
/// path, then the first type error.
pub fn parse(text: &str) -> Result<WebFile, Vec<String>> {
    bounded::parse_yaml(text)
}

fn pem(inline: &str, file: &str, what: &str, errors: &mut Vec<String>) -> Option<Pem> {
    match (inline.is_empty(), file.is_empty()) {
        (true, true) => None,
        (false, true) => Some(Pem::Inline(inline.to_string())),
        (true, false) => Some(Pem::File(file.to_string())),
        (false, false) => {
            errors.push(format!(
                "tls_server_config: both {what} and {what}_file are set; use one"
            ));
            None
        }
    }
}

fn version(
    v: &Option<String>,
    key: &str,
    default: TlsVersion,
    errors: &mut Vec<String>,
) -> TlsVersion {
    match v.as_deref() {
        None | Some("") => default,
        Some("TLS13") => TlsVersion::Tls13,
        Some("TLS12") => TlsVersion::Tls12,
        // rustls speaks TLS 1.2 and 1.3 only: a floor of 1.0 or 1.1 is
        // served as 1.2 (stricter than asked, never weaker).
        Some("TLS10" | "TLS11") if key == "min_version" => TlsVersion::Tls12,
        Some(s @ ("TLS10" | "TLS11")) => {
            errors.push(format!(
                "tls_server_config.{key}: {s} is not supported (rustls speaks TLS12 and TLS13)"
            ));
            default
        }
        Some(s) => {
            errors.push(format!(
                "tls_server_config.{key}: unknown TLS version {s:?} (known: TLS10, TLS11, TLS12, TLS13)"
            ));
            default
        }
    }
}

/// Parses a Go duration ("300ms", "1.5s", "1m30s", "0").
pub fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

/// Checks every value and returns all problems at once, each with its key.
/// Does not read the files the configuration names (see `tls.rs`).
pub fn validate(file: &WebFile) -> Result<WebSpec, Vec<String>> {
    let mut errors = Vec::new();
    let t = &file.tls_server_config;
    let enabled = [
        &t.cert,
        &t.key,
        &t.client_ca,
        &t.cert_file,
        &t.key_file,
        &t.client_ca_file,
        &t.client_auth_type,
    ]
    .iter()
    .any(|s| !s.is_empty());
    let tls = if enabled {
        let cert = pem(&t.cert, &t.cert_file, "cert", &mut errors);
        let key = pem(&t.key, &t.key_file, "key", &mut errors);
        let client_ca = pem(&t.client_ca, &t.client_ca_file, "client_ca", &mut errors);
        if t.cert.is_empty() && t.cert_file.is_empty() {
            errors.push("tls_server_config: missing one of cert or cert_file".into());
        }
        if t.key.is_empty() && t.key_file.is_empty() {
            errors.push("tls_server_config: missing one of key or key_file".into());
        }
        let client_auth = match t.client_auth_type.as_str() {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            other => {
                errors.push(format!(
                    "tls_server_config.client_auth_type: unknown type {other:?} (known: NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                ));
                ClientAuth::NoClientCert
            }
        };
        if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
            errors.push(
                "tls_server_config: client CA's have been configured without a client_auth_type"
                    .into(),
            );
        }
        if client_ca.is_none()
            && matches!(
                client_auth,
                ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
            )
        {
            errors.push(format!(
                "tls_server_config.client_auth_type: {} needs client_ca_file (or client_ca) to verify against",
                t.client_auth_type
            ));
        }
        if t.client_allowed_sans.is_some() {
            errors.push(
                "tls_server_config.client_allowed_sans: not supported by edgewatch yet; verify clients by their CA (client_ca_file) instead"
                    .into(),
            );
        }
        let min = version(
            &t.min_version,
            "min_version",
            TlsVersion::Tls12,
            &mut errors,
        );
        let max = version(
            &t.max_version,
            "max_version",
            TlsVersion::Tls13,
            &mut errors,
        );
        if min > max {
            errors.push("tls_server_config: min_version is above max_version".into());
        }
        let mut suites = Vec::new();
        for (i, s) in t.cipher_suites.iter().enumerate() {
            match CIPHER_SUITES.iter().find(|n| **n == s) {
                Some(n) => suites.push(*n),
                None if GO_ONLY_SUITES.contains(&s.as_str()) => errors.push(format!(
                    "tls_server_config.cipher_suites[{i}]: {s} is not supported by rustls (supported: {})",
                    CIPHER_SUITES.join(", ")
                )),
                None => errors.push(format!(
                    "tls_server_config.cipher_suites[{i}]: unknown cipher {s:?}"
                )),
            }
        }
        let mut curves = Vec::new();
        for (i, c) in t.curve_preferences.iter().enumerate() {
            match CURVES.iter().find(|n| **n == c) {
                Some(n) => curves.push(*n),
                None if c == "CurveP521" => errors.push(format!(
                    "tls_server_config.curve_preferences[{i}]: CurveP521 is not supported by rustls (supported: {})",
                    CURVES.join(", ")
                )),
                None => errors.push(format!(
                    "tls_server_config.curve_preferences[{i}]: unknown curve {c:?}"
                )),
            }
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsSpec {
                cert,
                key,
                client_ca,
                client_auth,
                min_version: min,
                max_version: max,
                cipher_suites: suites,
                curves,
                prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
            }),
            _ => None,
        }
    } else {
        None
    };

    for (name, value) in &file.http_server_config.headers {
        match HEADERS.iter().find(|(h, _)| h == name) {
            None => errors.push(format!(
                "http_server_config.headers: HTTP header {name:?} can not be configured (allowed: {})",
                HEADERS.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(", ")
            )),
            Some((_, allowed)) if !allowed.is_empty() && !allowed.contains(&value.as_str()) => {
                errors.push(format!(
                    "http_server_config.headers.{name}: invalid value {value:?} (expected one of: {})",
                    allowed.join(", ")
                ))
            }
            Some(_) if axum::http::HeaderValue::from_str(value).is_err() => errors.push(format!(
                "http_server_config.headers.{name}: {value:?} is not a valid header value"
            )),
            Some(_) => {}
        }
    }

    for (user, hash) in &file.basic_auth_users {
        if user.contains(':') {
            errors.push(format!(
                "basic_auth_users.{user}: a user name cannot contain ':' (basic auth splits on it)"
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            errors.push(format!(
                "basic_auth_users.{user}: not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            ));
        }
    }

    let rate_limit = match file.rate_limit.interval.as_deref() {
        None | Some("") => None,
        Some(s) => match go_duration(s) {
            Some(d) if d.is_zero() => None,
            Some(d) => {
                if file.rate_limit.burst == 0 {
                    errors.push(
                        "rate_limit.burst: must be at least 1 when rate_limit.interval is set"
                            .into(),
                    );
                }
                Some((d, file.rate_limit.burst))
            }
            None => {
                errors.push(format!(
                    "rate_limit.interval: {s:?} is not a duration (e.g. 100ms, 1s, 1m)"
                ));
                None
            }
        },
    };

    if errors.is_empty() {
        Ok(WebSpec {
            tls,
            users: file.basic_auth_users.clone(),
            headers: file
                .http_server_config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rate_limit,
        })
    } else {
        Err(errors)
    }
}

/// [`parse`] then [`validate`].
pub fn parse_and_validate(text: &str) -> Result<WebSpec, Vec<String>> {
    validate(&parse(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let s = parse_and_validate("").unwrap();
        assert_eq!(s.tls, None);
        assert!(s.users.is_empty() && s.headers.is_empty() && s.rate_limit.is_none());
    }

    // The toolkit's own test files (web/testdata), verbatim where they
    // exercise something rustls does.
    #[test]
    fn toolkit_good_files_parse() {
        let s = parse_and_validate(
            "tls_server_config:\n  cert_file: \"server.crt\"\n  key_file: \"server.key\"\n  client_auth_type: \"RequireAndVerifyClientCert\"\n  client_ca_file: \"tls-ca-chain.pem\"\n",
        )
        .unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.cert, Pem::File("server.crt".into()));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.client_ca, Some(Pem::File("tls-ca-chain.pem".into())));
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );

        let s = parse_and_validate(&format!(
            "tls_server_config:\n  cert_file: \"server.crt\"\n  key_file: \"server.key\"\nbasic_auth_users:\n  alice: {HASH}\n  bob: {HASH}\n"
        ))
        .unwrap();
        assert_eq!(s.users.len(), 2);

        let s = parse_and_validate(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n    Strict-Transport-Security: max-age=31536000; includeSubDomains\n    Content-Security-Policy: default-src 'self'\n",
        )
        .unwrap();
        assert_eq!(s.headers.len(), 5);

        let s = parse_and_validate(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  curve_preferences: [CurveP256, X25519]\n  min_version: TLS12\n  max_version: TLS12\n  prefer_server_cipher_suites: false\nhttp_server_config:\n  http2: false\nrate_limit:\n  interval: 1s\n  burst: 2\n",
        )
        .unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(
            tls.cipher_suites,
            vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
        );
        assert_eq!(tls.curves, vec!["CurveP256", "X25519"]);
        assert!(!tls.prefer_server_cipher_suites);
        assert_eq!(s.rate_limit, Some((Duration::from_secs(1), 2)));
    }

    fn errors(text: &str) -> Vec<String> {
        parse_and_validate(text).unwrap_err()
    }

    #[test]
    fn toolkit_bad_files_are_refused_with_the_key() {
        assert_eq!(
            errors("tls_server_config:\n  cert_file: \"\"\n  key_file: \"server.key\"\n"),
            vec!["tls_server_config: missing one of cert or cert_file"]
        );
        assert_eq!(
            errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n"),
            vec!["tls_server_config: client CA's have been configured without a client_auth_type"]
        );
        assert!(
            errors("basic_auth_users:\n  alice: notahash\n")[0]
                .starts_with("basic_auth_users.alice: not a bcrypt hash")
        );
        assert!(
            errors("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")[0]
                .starts_with("http_server_config.headers.X-Frame-Options: invalid value \"allow\"")
        );
        assert!(
            errors("http_server_config:\n  headers:\n    Server: x\n")[0]
                .contains("\"Server\" can not be configured")
        );
        assert!(
            errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n")[0]
                .starts_with("tls_server_config.min_version: unknown TLS version \"TLS14\"")
        );
        assert!(errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n")[0]
            .contains("not supported by rustls"));
        assert!(errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_INVENTED]\n")[0]
            .contains("unknown cipher"));
        assert!(errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveInvented]\n")[0]
            .contains("unknown curve"));
        assert_eq!(
            errors("tls_server_config:\n  certfile: a\nfoo: 1\n"),
            vec![
                "tls_server_config.certfile: unknown key",
                "foo: unknown key"
            ]
        );
        assert!(errors("tls_server_config: [1, 2]\n")[0].contains("invalid type"));
        assert!(errors("rate_limit:\n  interval: soon\n")[0].starts_with("rate_limit.interval"));
        assert!(errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n")[0]
            .contains("needs client_ca_file"));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("web: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        let e = errors(&deep);
        assert_eq!(e, vec!["collections nested more than 64 deep"]);
        assert!(t.elapsed() < Duration::from_secs(1));
        // Quoted and commented brackets don't count.
        assert!(
            bounded::flow_depth_error(&format!(
                "a: \"{}\" # {}\n",
                "[".repeat(100),
                "{".repeat(100)
            ))
            .is_none()
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("5"), None);
        assert_eq!(go_duration("5y"), None);
        assert_eq!(go_duration("1e308h"), None);
    }
}
