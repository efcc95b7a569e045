//! The keys of the node's SSH server: its own host key, generated once and kept in the
//! node's home, and the operator's `authorized_keys` file, read again at each login.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Algorithm, PrivateKey, PublicKey};

/// The host key's file in the node's home.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// The operator's keys in the node's home unless `--ssh-authorized-keys` says otherwise.
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the SSH host key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the SSH host key {path} is not an unencrypted OpenSSH private key ({reason}); move it away and a new one is made")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write the SSH host key {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate an SSH host key: {0}")]
    Generate(String),
}

/// The host key at `<home>/ssh_host_ed25519_key`, made (ed25519, mode 0600) when absent,
/// so clients see the same host key across restarts.
pub fn load_or_create_host_key(home: &Path) -> Result<PrivateKey, KeyError> {
    let path = home.join(HOST_KEY_FILE);
    match fs_err::read_to_string(&path) {
        Ok(text) => {
            let key =
                PrivateKey::from_openssh(text.as_bytes()).map_err(|error| KeyError::Parse {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
            if key.is_encrypted() {
                return Err(KeyError::Parse {
                    path,
                    reason: "it is encrypted".into(),
                });
            }
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create_host_key(&path),
        Err(source) => Err(KeyError::Read { path, source }),
    }
}

fn create_host_key(path: &Path) -> Result<PrivateKey, KeyError> {
    use fs_err::os::unix::fs::OpenOptionsExt as _;
    use std::io::Write as _;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| KeyError::Generate(error.to_string()))?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|error| KeyError::Generate(error.to_string()))?;
    let failed = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    // Created private (0600) and never replaced: `create_new` fails rather than
    // overwrite a key another node process wrote meanwhile.
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(key)
}

/// `SHA256:…`, as `ssh-keygen -lf` and the client's first-connection prompt show it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// One line of an `authorized_keys` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizedLine {
    /// Blank or a `#` comment.
    Nothing,
    Key(Box<PublicKey>),
    /// A key with options (`command=`, `from=`, `restrict`, …): this server cannot
    /// enforce them, so such a line grants nothing rather than more than it says.
    WithOptions,
    /// Not a key this server understands (RSA/DSA, certificates, garbage).
    Invalid(String),
}

/// Key types, as the first word of a line without options.
fn names_a_key_type(word: &str) -> bool {
    word.starts_with("ssh-")
        || word.starts_with("ecdsa-sha2-")
        || word.starts_with("sk-ssh-")
        || word.starts_with("sk-ecdsa-")
}

/// Parses one line: `[options] type base64 [comment]`.
pub fn parse_authorized_line(line: &str) -> AuthorizedLine {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return AuthorizedLine::Nothing;
    }
    let first = line.split_ascii_whitespace().next().unwrap_or_default();
    if !names_a_key_type(first) {
        return AuthorizedLine::WithOptions;
    }
    match PublicKey::from_openssh(line) {
        // What this server can verify signatures of (it is built without RSA).
        Ok(key)
            if matches!(
                key.algorithm(),
                Algorithm::Ed25519 | Algorithm::Ecdsa { .. }
            ) =>
        {
            AuthorizedLine::Key(Box::new(key))
        }
        Ok(key) => AuthorizedLine::Invalid(format!(
            "{} keys are not accepted: use ed25519 (ssh-keygen -t ed25519) or ECDSA",
            key.algorithm()
        )),
        Err(error) => AuthorizedLine::Invalid(error.to_string()),
    }
}

/// Whether `offered` is one of the keys of `contents` (an `authorized_keys` file); only
/// the key itself counts, not its comment.
pub fn authorizes(contents: &str, offered: &PublicKey) -> bool {
    contents
        .lines()
        .any(|line| match parse_authorized_line(line) {
            AuthorizedLine::Key(key) => key.key_data() == offered.key_data(),
            _ => false,
        })
}

/// Reads the file now (each login: a key added takes effect without a restart). A
/// missing or unreadable file authorizes nobody.
pub fn file_authorizes(path: &Path, offered: &PublicKey) -> bool {
    match fs_err::read_to_string(path) {
        Ok(contents) => authorizes(&contents, offered),
        Err(error) => {
            tracing::warn!(%error, "ssh login refused: cannot read the authorized keys");
            false
        }
    }
}

/// Logs lines of the file that grant nothing, so the operator learns why a key fails.
pub fn check_authorized_keys(path: &Path) {
    let contents = match fs_err::read_to_string(path) {
        Ok(contents) => contents,
        Err(error) => {
            tracing::warn!(%error, "no SSH key is authorized until this file exists");
            return;
        }
    };
    for (index, line) in contents.lines().enumerate() {
        match parse_authorized_line(line) {
            AuthorizedLine::WithOptions => tracing::warn!(
                path = %path.display(),
                line = index + 1,
                "this key has options, which the node cannot enforce: it is ignored"
            ),
            AuthorizedLine::Invalid(reason) => tracing::warn!(
                path = %path.display(),
                line = index + 1,
                %reason,
                "this line is not an ed25519 or ECDSA public key: ignored"
            ),
            AuthorizedLine::Nothing | AuthorizedLine::Key(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    /// The SSH wire form of an RSA public key (e = 65537, a 2048-bit n), in base64.
    fn rsa_public_key_base64() -> String {
        use base64::Engine as _;
        let mut blob = Vec::new();
        let mut field = |bytes: &[u8]| {
            blob.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            blob.extend_from_slice(bytes);
        };
        field(b"ssh-rsa");
        field(&[0x01, 0x00, 0x01]);
        let mut modulus = vec![0x00];
        modulus.extend_from_slice(&[0xc5; 256]);
        field(&modulus);
        base64::engine::general_purpose::STANDARD.encode(blob)
    }

    #[test]
    fn lines_are_keys_comments_options_or_invalid() {
        let alice = format!("{} alice@laptop", key(9).to_openssh().unwrap());
        assert_eq!(parse_authorized_line(""), AuthorizedLine::Nothing);
        assert_eq!(parse_authorized_line("  # a note"), AuthorizedLine::Nothing);
        assert!(matches!(
            parse_authorized_line(&alice),
            AuthorizedLine::Key(_)
        ));
        assert_eq!(
            parse_authorized_line(&format!("command=\"/bin/true\" {alice}")),
            AuthorizedLine::WithOptions
        );
        assert_eq!(
            parse_authorized_line(&format!("restrict {alice}")),
            AuthorizedLine::WithOptions
        );
        assert!(matches!(
            parse_authorized_line("ssh-ed25519 not-base64"),
            AuthorizedLine::Invalid(_)
        ));
        // A well-formed RSA key is refused by name, not silently kept.
        let rsa = format!("ssh-rsa {} rsa", rsa_public_key_base64());
        match parse_authorized_line(&rsa) {
            AuthorizedLine::Invalid(reason) => assert!(reason.contains("not accepted"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_listed_key_is_authorized_whatever_its_comment() {
        let mine = key(1);
        let line = mine.to_openssh().unwrap();
        let file = format!("# keys\n\n{line} someone-else\n");
        assert!(authorizes(&file, &mine));
        assert!(!authorizes(&file, &key(2)));
        assert!(!authorizes("", &mine));
        // The same key behind options grants nothing.
        assert!(!authorizes(&format!("from=\"10.0.0.1\" {line}\n"), &mine));
    }

    #[test]
    fn the_host_key_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let home = tempfile::tempdir().unwrap();
        let first = load_or_create_host_key(home.path()).unwrap();
        let mode = fs_err::metadata(home.path().join(HOST_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_host_key(home.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert!(fingerprint(first.public_key()).starts_with("SHA256:"));
        fs_err::write(home.path().join(HOST_KEY_FILE), "garbage").unwrap();
        assert!(matches!(
            load_or_create_host_key(home.path()),
            Err(KeyError::Parse { .. })
        ));
    }

    proptest! {
        #[test]
        fn no_line_panics_and_garbage_authorizes_nothing(line in ".{0,300}") {
            let _ = parse_authorized_line(&line);
            prop_assert!(!authorizes(&line, &key(3)));
        }
    }
}
