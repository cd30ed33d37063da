//! The audit signing key: Ed25519, stored as PKCS#8 PEM; the public half as SPKI PEM.

use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // The I/O error is part of the message, not a `source`: printed as a chain, it would
    // otherwise show twice.
    #[error("cannot read key file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write key file {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("{path} is not an Ed25519 {kind} key: {detail}")]
    Format {
        path: String,
        kind: &'static str,
        detail: String,
    },
}

/// Signs audit records.
pub struct AuditSigner {
    key: SigningKey,
    kid: String,
}

impl AuditSigner {
    pub fn from_key(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        Self { key, kid }
    }

    /// Loads a PKCS#8 PEM private key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
            path: path.display().to_string(),
            kind: "private",
            detail: pem_problem(&pem, "PRIVATE KEY", &e),
        })?;
        Ok(Self::from_key(key))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A key derived from this signing key for sealing outbox events (HMAC-SHA256 of a fixed
    /// label, keyed by the private key): every process that signs the trail can seal and
    /// check them; nobody without the private key can forge one.
    pub fn outbox_key(&self) -> [u8; 32] {
        super::outbox::hmac_sha256(&self.key.to_bytes(), b"stepgate audit outbox v1")
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, body: &[u8]) -> [u8; 64] {
        self.key.sign(body).to_bytes()
    }

    /// Writes the private key (PKCS#8 v1 PEM, owner-only) to `path` and the public key (SPKI
    /// PEM) next to it with the extension `.pub`; returns the public key's path.
    pub fn write_pair(&self, path: &Path) -> Result<std::path::PathBuf, KeyError> {
        let write_err = |p: &Path| {
            let path = p.display().to_string();
            move |error| KeyError::Write { path, error }
        };
        let format_err = |detail: String| KeyError::Format {
            path: path.display().to_string(),
            kind: "private",
            detail,
        };
        // PKCS#8 v1 (RFC 5208: the private key alone), which OpenSSL 3.0 and Python's
        // `cryptography` read. ed25519-dalek's own encoding is v2 (RFC 5958, with the public
        // key embedded), which both reject.
        let private = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format_err(e.to_string()))?;
        let public = self
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format_err(e.to_string()))?;
        write_private(path, private.as_bytes()).map_err(write_err(path))?;
        let public_path = path.with_extension("pub");
        std::fs::write(&public_path, public).map_err(write_err(&public_path))?;
        Ok(public_path)
    }
}

/// Loads an SPKI PEM public key (as written by `stepgate keygen`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read(path)?;
    let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Format {
        path: path.display().to_string(),
        kind: "public",
        detail: pem_problem(&pem, "PUBLIC KEY", &e),
    })?;
    crate::audit::verify::strong_key(key.as_bytes()).ok_or_else(|| KeyError::Format {
        path: path.display().to_string(),
        kind: "public",
        detail: "a weak (small-order) or non-canonical Ed25519 point: no signature can be \
                 trusted under it"
            .into(),
    })
}

/// Why `pem` is not the `label` key `stepgate keygen` writes, in a reader's terms.
fn pem_problem(pem: &str, label: &str, error: &dyn std::fmt::Display) -> String {
    let Some(found) = pem
        .lines()
        .find_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .and_then(|rest| rest.strip_suffix("-----"))
    else {
        return format!(
            "not a PEM {} (as `stepgate keygen` writes)",
            label.to_lowercase()
        );
    };
    if found != label {
        return format!(
            "a PEM {}, not a {} (as `stepgate keygen` writes)",
            found.to_lowercase(),
            label.to_lowercase()
        );
    }
    format!(
        "a PEM {} that is not Ed25519 or is damaged: {error}",
        label.to_lowercase()
    )
}

/// A key's id: the first 16 hex digits of SHA-256 over its 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The file as text; bytes that are not UTF-8 cannot be PEM and are reported as such later.
fn read(path: &Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|error| KeyError::Read {
        path: path.display().to_string(),
        error,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
