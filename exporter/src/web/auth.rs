//! HTTP basic authentication against bcrypt hashes, as the toolkit does it:
//! an unknown user is compared against a fixed hash (same cost, same time,
//! so timing does not tell which users exist), results are cached by a
//! digest of (user, hash, password) so a scrape every 15 s costs one bcrypt
//! per password change rather than ~70 ms per request, and only one bcrypt
//! runs at a time (it is CPU-bound by design; a flood of wrong passwords
//! queues instead of taking every core).
//!
//! Passwords longer than 72 bytes are refused, as Go's bcrypt refuses them
//! (bcrypt ignores what is past 72 bytes; accepting them would accept any
//! suffix).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use base64::Engine;

/// bcrypt of "fakepassword" at cost 10: the toolkit's stand-in for unknown
/// users.
const FAKE_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Cached verdicts kept; past it the cache starts over.
const CACHE_ENTRIES: usize = 256;

/// The user and password of an `Authorization: Basic ...` header value.
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[derive(Debug, Default)]
pub struct Authenticator {
    cache: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt at a time.
    gate: tokio::sync::Mutex<()>,
}

impl Authenticator {
    /// True if `header` (the Authorization header, if any) names a user of
    /// `users` with the right password.
    pub async fn check(&self, users: &BTreeMap<String, String>, header: Option<&[u8]>) -> bool {
        let Some((user, pass)) = header.and_then(basic_credentials) else {
            return false;
        };
        let (hash, known) = match users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (FAKE_HASH.to_string(), false),
        };
        let key = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [user.as_bytes(), hash.as_bytes(), pass.as_bytes()] {
                ctx.update(&(part.len() as u64).to_le_bytes());
                ctx.update(part);
            }
            let mut k = [0u8; 32];
            k.copy_from_slice(ctx.finish().as_ref());
            k
        };
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let _one = self.gate.lock().await;
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let ok = tokio::task::spawn_blocking(move || {
            // Go's limit: more than 72 bytes is an error, exactly 72 is fine
            // (bcrypt's non_truncating_verify also refuses 72, for its NUL).
            pass.len() <= 72 && bcrypt::verify(pass.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, ok);
        ok && known
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
        .into_bytes()
    }

    #[test]
    fn parses_basic_credentials() {
        assert_eq!(
            basic_credentials(b"Basic dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic"), None);
        assert_eq!(basic_credentials(&[0xff, 0xfe]), None);
    }

    #[tokio::test]
    async fn right_wrong_unknown_and_too_long() {
        let users: BTreeMap<String, String> =
            [("alice".to_string(), bcrypt::hash("secret", 4).unwrap())].into();
        let a = Authenticator::default();
        assert!(a.check(&users, Some(&header("alice", "secret"))).await);
        // Cached, same answer.
        assert!(a.check(&users, Some(&header("alice", "secret"))).await);
        assert!(!a.check(&users, Some(&header("alice", "wrong"))).await);
        assert!(
            !a.check(&users, Some(&header("mallory", "fakepassword")))
                .await
        );
        assert!(!a.check(&users, None).await);
        let long: BTreeMap<String, String> =
            [("bob".to_string(), bcrypt::hash("x".repeat(72), 4).unwrap())].into();
        assert!(a.check(&long, Some(&header("bob", &"x".repeat(72)))).await);
        assert!(!a.check(&long, Some(&header("bob", &"x".repeat(73)))).await);
    }
}
