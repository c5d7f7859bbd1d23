//! [`TrustPolicy`]: whose signed manifests a store accepts from outside.

use zdn_protocol::manifest::SignedManifest;

use super::StoreError;

/// Which publishers' manifests are accepted from outside (import, network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    pub trusted: Vec<[u8; 32]>,
    /// Accept any publisher whose signature verifies.
    pub any: bool,
}

impl TrustPolicy {
    pub fn check(&self, m: &SignedManifest) -> Result<(), StoreError> {
        if self.allows(&m.publisher) {
            Ok(())
        } else {
            Err(StoreError::Untrusted(m.publisher_hex()))
        }
    }

    /// Whether manifests signed by `publisher` are accepted.
    pub fn allows(&self, publisher: &[u8; 32]) -> bool {
        self.any || self.trusted.contains(publisher)
    }
}
