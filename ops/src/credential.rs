//! Credentials of the controller's API: how they are read from files and how an agent's is
//! made and checked. docs/security.md has the model (who may call what).
//!
//! A standalone agent's credential names its node and is good for that node only:
//! `md1:<node>:<mac>`, the MAC an HMAC-SHA256 of the node's name under the controller's agent
//! key. So the controller keeps one secret whatever the number of nodes, a credential taken
//! from one node speaks for that node alone, and a new key revokes them all. (In Kubernetes an
//! agent presents its pod's service-account token instead, which the API server vouches for.)

use std::path::{Path, PathBuf};

use ring::hmac;

/// What every agent credential starts with; also tells it apart from the other tokens.
pub const AGENT_PREFIX: &str = "md1:";
/// An agent key shorter than this is refused: HMAC-SHA256 wants a key of its output's size.
pub const MIN_KEY_BYTES: usize = 32;
/// Where a client may put its credential besides `Authorization`: the Kubernetes API server's
/// service proxy (how the CLI reaches the controller in a cluster) drops `Authorization`.
pub const ALT_AUTHORIZATION: &str = "x-meshdoctor-authorization";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: expected a token, the file is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: expected at least {MIN_KEY_BYTES} bytes of key (e.g. `head -c 32 /dev/urandom | \
         base64`), found {found}", path.display()
    )]
    ShortKey { path: PathBuf, found: usize },
}

/// The token in `path`, without surrounding whitespace (a trailing newline); an empty file is
/// an error, never "no token".
pub fn read_token(path: &Path) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        path: path.into(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::Empty { path: path.into() });
    }
    Ok(token.to_string())
}

/// Compares without an early exit, so an answer's timing does not tell how much of a secret
/// a guess got right.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The controller's agent key: makes and checks the agents' per-node credentials.
pub struct NodeKey(hmac::Key);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// The key in `path` (its bytes, surrounding whitespace trimmed).
    pub fn read(path: &Path) -> Result<Self, CredentialError> {
        let bytes = std::fs::read(path).map_err(|source| CredentialError::Read {
            path: path.into(),
            source,
        })?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_KEY_BYTES {
            return Err(CredentialError::ShortKey {
                path: path.into(),
                found: key.len(),
            });
        }
        Ok(Self::new(key))
    }

    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The credential of the agent on `node`.
    pub fn credential(&self, node: &str) -> String {
        let mac = hmac::sign(&self.0, node.as_bytes());
        let hex: String = mac.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{AGENT_PREFIX}{node}:{hex}")
    }

    /// The node `credential` was made for, if this key made it.
    pub fn node_of<'a>(&self, credential: &'a str) -> Option<&'a str> {
        let (node, hex) = credential.strip_prefix(AGENT_PREFIX)?.rsplit_once(':')?;
        let mac = decode_hex(hex)?;
        // Constant time: a forger learns nothing from how long a wrong MAC took.
        hmac::verify(&self.0, node.as_bytes(), &mac).ok()?;
        Some(node)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_good_for_its_node_only() {
        let key = NodeKey::new(&[7; 32]);
        let cred = key.credential("node-1.example.com");
        assert_eq!(key.node_of(&cred), Some("node-1.example.com"));
        // The same MAC under another node's name, another key's credential, garbage.
        let mac = cred.rsplit_once(':').unwrap().1;
        assert_eq!(key.node_of(&format!("{AGENT_PREFIX}node-2:{mac}")), None);
        assert_eq!(
            key.node_of(&NodeKey::new(&[8; 32]).credential("node-1")),
            None
        );
        for bad in [
            "",
            "md1:",
            "md1:node-1",
            "md1:node-1:zz",
            "md1:node-1:abc",
            "md1:é:ab",
        ] {
            assert_eq!(key.node_of(bad), None, "{bad:?}");
        }
        let truncated = &cred[..cred.len() - 2];
        assert_eq!(key.node_of(truncated), None);
    }

    #[test]
    fn key_and_token_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("md-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "0123456789\n").unwrap();
        let e = NodeKey::read(&short).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("at least 32 bytes") && e.contains("found 10"));
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(matches!(
            read_token(&empty),
            Err(CredentialError::Empty { .. })
        ));
        std::fs::write(&empty, "s3cret\n").unwrap();
        assert_eq!(read_token(&empty).unwrap(), "s3cret");
        let missing = read_token(&dir.join("missing")).unwrap_err().to_string();
        assert!(missing.contains("missing"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        for other in ["abd", "ab", "abcd", ""] {
            assert!(!same_secret(other, "abc"), "{other:?}");
        }
    }
}
