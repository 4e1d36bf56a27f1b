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

    /// The key that encrypts secrets at rest, derived from the master key.
    fn sealing_key(&self) -> [u8; 32] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.master)
            .expect("HMAC takes keys of any length");
        mac.update(b"switchyard settings encryption v1");
        mac.finalize().into_bytes().into()
    }

    /// Encrypts a secret for storage: `enc:v1:<base64 nonce ‖ ciphertext>`
    /// (ChaCha20-Poly1305, random nonce).
    pub fn seal(&self, plaintext: &str) -> String {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, KeyInit};
        let cipher = chacha20poly1305::ChaCha20Poly1305::new((&self.sealing_key()).into());
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let Ok(ciphertext) = cipher.encrypt((&nonce).into(), plaintext.as_bytes()) else {
            return plaintext.to_string();
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Decrypts what [`Keyring::seal`] made; other strings pass through.
    pub fn open(&self, stored: &str) -> Result<String, String> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, KeyInit};
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a stored secret is corrupt".to_string())?;
        if bytes.len() < 12 {
            return Err("a stored secret is corrupt".into());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let cipher = chacha20poly1305::ChaCha20Poly1305::new((&self.sealing_key()).into());
        let plain = cipher.decrypt(nonce.into(), ciphertext).map_err(|_| {
            "a stored secret cannot be decrypted: was the master key changed?".to_string()
        })?;
        String::from_utf8(plain).map_err(|_| "a stored secret is corrupt".to_string())
    }

    /// Seals the secret fields of a destination or source configuration:
    /// `shared_secret`, `previous_shared_secret` and every string in `settings`.
    pub fn seal_config(&self, config: &mut serde_json::Value) {
        self.walk_secrets(config, &mut |k, v| *v = k.seal(v));
    }

    /// Opens what [`Keyring::seal_config`] sealed.
    pub fn open_config(&self, config: &mut serde_json::Value) -> Result<(), String> {
        let mut error = None;
        self.walk_secrets(config, &mut |k, v| match k.open(v) {
            Ok(plain) => *v = plain,
            Err(e) => error = Some(e),
        });
        error.map_or(Ok(()), Err)
    }

    fn walk_secrets(
        &self,
        config: &mut serde_json::Value,
        f: &mut dyn FnMut(&Keyring, &mut String),
    ) {
        for key in ["shared_secret", "previous_shared_secret"] {
            if let Some(serde_json::Value::String(s)) = config.get_mut(key) {
                f(self, s);
            }
        }
        if let Some(serde_json::Value::Object(settings)) = config.get_mut("settings") {
            for v in settings.values_mut() {
                if let serde_json::Value::String(s) = v {
                    f(self, s);
                }
            }
        }
    }

    /// The digest stored in place of a credential.
    pub fn hash(&self, credential: &str) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.master)
            .expect("HMAC takes keys of any length");
        mac.update(credential.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The prefix of a sealed secret.
pub const SEALED_PREFIX: &str = "enc:v1:";

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
    fn secrets_are_sealed_and_opened() {
        let k = Keyring::from_bytes([7; 32]);
        let sealed = k.seal("hunter2");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("hunter2"));
        assert_ne!(sealed, k.seal("hunter2"), "a fresh nonce each time");
        assert_eq!(k.open(&sealed).unwrap(), "hunter2");
        assert_eq!(k.open("plain").unwrap(), "plain");
        assert!(Keyring::from_bytes([8; 32]).open(&sealed).is_err());
        let mut config = serde_json::json!({"shared_secret": "s", "settings": {"apiKey": "k", "n": 1}, "urls": ["u"]});
        k.seal_config(&mut config);
        assert!(
            !config.to_string().contains("\"k\"")
                && config["urls"][0] == "u"
                && config["settings"]["n"] == 1
        );
        k.open_config(&mut config).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"shared_secret": "s", "settings": {"apiKey": "k", "n": 1}, "urls": ["u"]})
        );
    }

    #[test]
    fn generated_credentials_are_distinct() {
        let a = generate_credential("wk_");
        assert!(a.starts_with("wk_") && a.len() == 35);
        assert_ne!(a, generate_credential("wk_"));
    }
}
