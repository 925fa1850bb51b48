//! This node's X25519 key pair for secrets: made once, kept in the data dir (`seal.key`, mode
//! 0600), its public half published in gossip (`sealkey`) so writers can seal to it.
//!
//! Whoever reads `seal.key` can open every secret version sealed to this node: it is checked
//! like the cluster's keys (no group or other bits) before it is used.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use starling_protocol::objects::seal::NodeKeys;
use zeroize::Zeroizing;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "seal.key";

/// Loads this node's key pair, making it on first use.
pub fn load_or_create(data_dir: &Path) -> Result<NodeKeys, String> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let mode = std::fs::metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} is mode {:04o}: a secret key must be open to its owner only; fix it with `chmod 600 {0}`",
                    path.display(),
                    mode & 0o7777
                ));
            }
            let secret: [u8; 32] = bytes[..].try_into().map_err(|_| {
                format!(
                    "{} holds {} bytes, not a 32-byte key: restore it from a backup, or delete it (secrets sealed to this node must then be set again)",
                    path.display(),
                    bytes.len()
                )
            })?;
            Ok(NodeKeys::from_secret(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(&mut secret[..])
                .map_err(|_| "the system's random source failed".to_string())?;
            let keys = NodeKeys::from_secret(*secret);
            let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&keys.secret_bytes()[..])?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(keys)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Random bytes from the system's source, for the client's sealing (data keys, nonces,
/// version ids, one-time keys).
pub fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("made");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).expect("read");
        assert_eq!(first.public(), again.public());
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let err = load_or_create(dir.path()).expect_err("exposed");
        assert!(err.contains("chmod 600"), "{err}");
    }
}
