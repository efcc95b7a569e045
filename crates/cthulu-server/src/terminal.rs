//! Terminal tokens: short-lived signed capabilities that let a browser open one
//! sandbox's terminal WebSocket (`exec/ws`, `processes/{pid}/ws`) without the API key.
//!
//! A token is `base64url(<sandbox id>:<expiry ms>)` `.` `base64url(HMAC-SHA256(key, that
//! payload))`. It is good for that sandbox only and until the expiry; the check is made
//! at the upgrade, so an open terminal outlives its token.
//!
//! Keys ([`TerminalKey::for_server`]): a server signs and verifies with its own random key
//! (`$CTHULU_HOME/terminal.key`, mode 0600), except a node (a server started with a fixed
//! token, `ServerConfig::access_token`), which verifies with a key derived from that
//! token. The platform knows each node's token, derives the same key, and signs tokens for
//! the node's sandbox id, so the browser connects straight to the node.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a terminal token is good for.
pub const TOKEN_LIFETIME_MS: u64 = 60_000;
/// The file of a server's own key, under `$CTHULU_HOME`.
pub const KEY_FILE: &str = "terminal.key";
const KEY_BYTES: usize = 32;
/// What a node token is hashed with to make the node's terminal key.
const NODE_KEY_CONTEXT: &[u8] = b"cthulu terminal tokens v1";
/// Longest token looked at; anything longer is malformed before any work is done.
const MAX_TOKEN_CHARS: usize = 512;

type HmacSha256 = Hmac<Sha256>;

/// Why a terminal token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the terminal token is malformed")]
    Malformed,
    #[error("the terminal token's signature is not valid for this server")]
    BadSignature,
    #[error("the terminal token is for sandbox {token_sandbox}, not {path_sandbox}")]
    OtherSandbox {
        token_sandbox: String,
        path_sandbox: String,
    },
    #[error("the terminal token expired {ago_ms} ms ago")]
    Expired { ago_ms: u64 },
}

/// A signing key. Never printed.
#[derive(Clone)]
pub struct TerminalKey(Vec<u8>);

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TerminalKey(<redacted>)")
    }
}

impl TerminalKey {
    /// The key a node with this fixed token verifies with, and its platform signs with.
    pub fn for_node_token(node_token: &str) -> TerminalKey {
        let mut mac = HmacSha256::new_from_slice(node_token.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(NODE_KEY_CONTEXT);
        TerminalKey(mac.finalize().into_bytes().to_vec())
    }

    /// The key of this server: derived from its fixed token (`ServerConfig::access_token`,
    /// a node's) when it has one, its own (made on first use) otherwise. The one place
    /// that chooses.
    pub fn for_server(node_token: Option<&str>, home: &Path) -> std::io::Result<TerminalKey> {
        match node_token {
            Some(token) => Ok(TerminalKey::for_node_token(token)),
            None => TerminalKey::load_or_create(&home.join(KEY_FILE)),
        }
    }

    /// Reads the key at `path`, or writes a new random one there (mode 0600).
    pub fn load_or_create(path: &Path) -> std::io::Result<TerminalKey> {
        use fs_err::os::unix::fs::OpenOptionsExt;
        use std::io::Write;
        match fs_err::read(path) {
            Ok(bytes) if bytes.len() == KEY_BYTES => return Ok(TerminalKey(bytes)),
            Ok(bytes) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                    "{} holds {} bytes, not a {KEY_BYTES}-byte key; remove it to make a new one",
                    path.display(),
                    bytes.len()
                ),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let mut key = vec![0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|error| std::io::Error::other(error.to_string()))?;
        let mut file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&key)?;
        Ok(TerminalKey(key))
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(payload);
        mac
    }

    /// A token for `sandbox_id` good until `expires_at_ms`.
    pub fn sign(&self, sandbox_id: &str, expires_at_ms: u64) -> String {
        let payload = format!("{sandbox_id}:{expires_at_ms}");
        let signature = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// Checks that `token` is signed with this key, names `sandbox_id` and has not
    /// expired at `now_ms`. The signature is checked first (in constant time), so a
    /// forged token learns nothing else.
    pub fn verify(&self, token: &str, sandbox_id: &str, now_ms: u64) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(&payload)
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let (token_sandbox, expires) = payload.rsplit_once(':').ok_or(TokenError::Malformed)?;
        let expires_at_ms: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if token_sandbox != sandbox_id {
            return Err(TokenError::OtherSandbox {
                token_sandbox: token_sandbox.to_owned(),
                path_sandbox: sandbox_id.to_owned(),
            });
        }
        if now_ms >= expires_at_ms {
            return Err(TokenError::Expired {
                ago_ms: now_ms - expires_at_ms,
            });
        }
        Ok(())
    }
}

/// The sandbox id of a path whose WebSocket a terminal token may open:
/// `/api/v1/sandboxes/{id}/exec/ws` or `/api/v1/sandboxes/{id}/processes/{pid}/ws`.
pub fn terminal_path_sandbox(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/sandboxes/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [sandbox_id, "exec", "ws"] | [sandbox_id, "processes", _, "ws"]
            if !sandbox_id.is_empty() =>
        {
            Some(sandbox_id)
        }
        _ => None,
    }
}

/// The `token` parameter of a query string, if there is one.
pub fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TerminalKey {
        TerminalKey(vec![7; KEY_BYTES])
    }

    #[test]
    fn a_token_opens_its_own_sandbox_until_it_expires() {
        let token = key().sign("abc", 1_000);
        assert_eq!(key().verify(&token, "abc", 999), Ok(()));
        assert_eq!(
            key().verify(&token, "abc", 1_500),
            Err(TokenError::Expired { ago_ms: 500 })
        );
        assert!(matches!(
            key().verify(&token, "other", 999),
            Err(TokenError::OtherSandbox { .. })
        ));
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let token = key().sign("abc", 1_000);
        // Another key (another server, or a node with another token).
        let foreign = TerminalKey(vec![8; KEY_BYTES]);
        assert_eq!(
            foreign.verify(&token, "abc", 0),
            Err(TokenError::BadSignature)
        );
        // A longer expiry or another sandbox in the payload, signature kept.
        let (_, signature) = token.split_once('.').unwrap();
        for payload in ["abc:9999999", "xyz:1000"] {
            let tampered = format!("{}.{signature}", URL_SAFE_NO_PAD.encode(payload));
            assert_eq!(
                key().verify(&tampered, "abc", 0),
                Err(TokenError::BadSignature)
            );
        }
        for garbage in ["", ".", "abc", "a.b.c", "!!!.???", &"A".repeat(10_000)] {
            assert!(key().verify(garbage, "abc", 0).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn node_keys_follow_the_node_token() {
        let platform = TerminalKey::for_node_token("node-secret");
        let node = TerminalKey::for_node_token("node-secret");
        let token = platform.sign("n1", u64::MAX);
        assert_eq!(node.verify(&token, "n1", 0), Ok(()));
        let other = TerminalKey::for_node_token("another-secret");
        assert_eq!(other.verify(&token, "n1", 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_servers_own_key_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let first = TerminalKey::for_server(None, home.path()).unwrap();
        let again = TerminalKey::for_server(None, home.path()).unwrap();
        assert_eq!(first.0, again.0);
        let mode = std::fs::metadata(home.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(home.path().join(KEY_FILE), b"short").unwrap();
        assert!(TerminalKey::for_server(None, home.path()).is_err());
        assert!(!format!("{first:?}").contains('7'));
    }

    #[test]
    fn only_terminal_paths_take_tokens() {
        assert_eq!(
            terminal_path_sandbox("/api/v1/sandboxes/abc/exec/ws"),
            Some("abc")
        );
        assert_eq!(
            terminal_path_sandbox("/api/v1/sandboxes/abc/processes/p1/ws"),
            Some("abc")
        );
        for path in [
            "/api/v1/sandboxes/abc/exec",
            "/api/v1/sandboxes/abc",
            "/api/v1/sandboxes//exec/ws",
            "/api/v1/sandboxes/abc/files",
            "/api/v1/nodes",
        ] {
            assert_eq!(terminal_path_sandbox(path), None, "{path}");
        }
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
