//! Credentials at rest: write keys, tokens and admin tokens are stored only as
//! HMAC-SHA256 digests keyed by the master key, so a copy of the data
//! directory's database alone does not reveal them.

use hmac::{Hmac, Mac};
use rand::RngCore;
use std::path::Path;

/// The master key and what is derived from it.
#[derive(Clone)]
pub struct Keyring {
    master: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(…)")
    }
}

impl Keyring {
    /// Uses `master_hex` (64 hex digits) when given, else the `master.key` file
    /// in the data directory, created with fresh random bytes on first start.
    pub fn load(data_dir: &Path, master_hex: Option<&str>) -> Result<Keyring, String> {
        let text = match master_hex {
            Some(h) => h.trim().to_string(),
            None => {
                let path = data_dir.join("master.key");
                match std::fs::read_to_string(&path) {
                    Ok(t) => t.trim().to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let mut bytes = [0u8; 32];
                        rand::rng().fill_bytes(&mut bytes);
                        let text = hex::encode(bytes);
                        write_private(&path, &text)
                            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                        text
                    }
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
                }
            }
        };
        let bytes =
            hex::decode(&text).map_err(|_| "the master key must be 64 hex digits".to_string())?;
        let master: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the master key must be 64 hex digits (32 bytes)".to_string())?;
        Ok(Keyring { master })
    }

    /// A keyring for tests.
    pub fn from_bytes(master: [u8; 32]) -> Keyring {
        Keyring { master }
    }

    /// The digest stored in place of a credential.
    pub fn hash(&self, credential: &str) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.master)
            .expect("HMAC takes keys of any length");
        mac.update(credential.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// A new random credential: `prefix` + 32 hex digits.
pub fn generate_credential(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_stable() {
        let a = Keyring::from_bytes([1; 32]);
        let b = Keyring::from_bytes([2; 32]);
        assert_eq!(a.hash("wk"), a.hash("wk"));
        assert_ne!(a.hash("wk"), b.hash("wk"));
        assert_ne!(a.hash("wk"), a.hash("wk2"));
    }

    #[test]
    fn master_key_file_is_created_once() {
        let dir = std::env::temp_dir().join(format!("switchyard-keyring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Keyring::load(&dir, None).unwrap();
        let again = Keyring::load(&dir, None).unwrap();
        assert_eq!(first.hash("x"), again.hash("x"));
        assert!(Keyring::load(&dir, Some("zz")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generated_credentials_are_distinct() {
        let a = generate_credential("wk_");
        assert!(a.starts_with("wk_") && a.len() == 35);
        assert_ne!(a, generate_credential("wk_"));
    }
}
