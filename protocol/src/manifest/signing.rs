//! Publisher keys: ed25519 (RFC 8032) through `ed25519-dalek`. Key storage is the caller's business;
//! this module only turns 32 secret bytes into a signer and checks signatures.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// A publisher's signing key.
pub struct PublisherKey(SigningKey);

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(
            f,
            "PublisherKey({})",
            crate::Hash::from_bytes(self.public())
        )
    }
}

/// Why a signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("publisher key is not a valid ed25519 public key")]
    BadPublicKey,
    #[error("signature does not verify against the publisher key")]
    BadSignature,
}

impl PublisherKey {
    /// The key whose secret seed is `seed` (32 random bytes; see RFC 8032 §5.1.5).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        PublisherKey(SigningKey::from_bytes(seed))
    }

    /// The secret seed, for writing the key file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// Checks `signature` over `message` by `publisher`. Strict verification: rejects non-canonical
/// signatures and small-order keys, so one signed manifest has exactly one valid encoding.
pub fn verify(
    publisher: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SigningError> {
    let key = VerifyingKey::from_bytes(publisher).map_err(|_| SigningError::BadPublicKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &sig)
        .map_err(|_| SigningError::BadSignature)
}
