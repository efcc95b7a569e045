//! [`AccessToken`]: a secret compared in constant time and never printed. A server given
//! one (`ServerConfig::access_token`, as `cthulu node --token` does) accepts it as the only
//! bearer token of every route; the node also uses it for its terminal secrets.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A secret string. `Debug` shows nothing of it, so a config or record holding one can be
/// logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(secret: impl Into<String>) -> AccessToken {
        AccessToken(secret.into())
    }

    /// 256 random bits, URL-safe base64 without padding (43 characters).
    pub fn generate() -> AccessToken {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the operating system random source failed");
        AccessToken(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret. Both sides are hashed first, so the time taken
    /// says nothing about the secret, not even its length.
    pub fn matches(&self, candidate: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |difference, (left, right)| difference | (left ^ right))
            == 0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AccessToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_secret() {
        let token = AccessToken::new("s3cret");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
        assert!(!token.matches("S3CRET"));
    }

    #[test]
    fn generated_secrets_are_url_safe_and_distinct() {
        let first = AccessToken::generate();
        let second = AccessToken::generate();
        assert_ne!(first, second);
        assert_eq!(first.expose().len(), 43);
        assert!(first
            .expose()
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", AccessToken::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
