//! The first step of a fetch: the signed manifest, checked before anything else is asked for.

use libp2p::PeerId;
use zdn_protocol::chunk;
use zdn_protocol::manifest::{self, SignedManifest};
use zdn_protocol::wire::{Request, Response};
use zdn_protocol::Hash;

use crate::net::error::FetchError;
use crate::net::fetch::peers::ask;
use crate::net::handle::NodeHandle;
use crate::net::peers::Offence;

/// The manifest named `hash`: from a download in progress here, else from the first peer that
/// gives one that hashes to `hash`, verifies and is from a trusted publisher. A peer that sends
/// one that does not hash to `hash` or does not verify is banned; one that sends a valid manifest
/// of a publisher this node does not trust is not blamed.
pub(super) async fn obtain_manifest(
    node: &NodeHandle,
    hash: Hash,
    peers: &[PeerId],
) -> Result<SignedManifest, FetchError> {
    if let Some(m) = node.store.call(move |s| s.partial(&hash)).await? {
        return Ok(m);
    }
    let mut untrusted = None;
    let mut problems = Vec::new();
    for &p in peers.iter().filter(|p| !node.is_banned(p)) {
        let max = 1 + manifest::MAX_MANIFEST_LEN;
        let bytes = match ask(node, p, &Request::GetManifest(hash), max).await {
            Ok(Response::Manifest(b)) => b,
            Ok(Response::NotFound(_)) => continue,
            Ok(other) => {
                node.penalise(p, Offence::WrongAnswer).await;
                problems.push(format!("{p}: unexpected answer {}", answer_name(&other)));
                continue;
            }
            Err(e) => {
                if e.slow {
                    node.penalise(p, Offence::Trickle).await;
                }
                problems.push(format!("{p}: {e}"));
                continue;
            }
        };
        if Hash::of(&bytes) != hash {
            node.penalise(p, Offence::BadData).await;
            problems.push(format!("{p}: sent a manifest that does not hash to {hash}"));
            continue;
        }
        let m = match manifest::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                node.penalise(p, Offence::BadData).await;
                problems.push(format!("{p}: invalid manifest: {e}"));
                continue;
            }
        };
        if node.trust.check(&m).is_err() {
            untrusted = Some(m.publisher_hex());
            continue;
        }
        let limit = node.store.call(|s| Ok(s.limits())).await?;
        if m.manifest.object_len > limit.max_object_size {
            return Err(FetchError::Verification(format!(
                "object of {} bytes is over this store's {}-byte limit",
                m.manifest.object_len, limit.max_object_size
            )));
        }
        chunk::check_coverage(&m.manifest.chunks, m.manifest.object_len)
            .map_err(|e| FetchError::Verification(format!("manifest {hash}: {e}")))?;
        let stored = m.clone();
        node.store.call(move |s| s.begin_partial(&stored)).await?;
        return Ok(m);
    }
    if let Some(publisher) = untrusted {
        return Err(FetchError::Untrusted { hash, publisher });
    }
    if !problems.is_empty() && problems.len() == peers.len() {
        return Err(FetchError::Incomplete {
            hash,
            done: 0,
            total: 0,
            reason: format!("no peer gave a valid manifest: {}", problems.join("; ")),
        });
    }
    Err(FetchError::NotFound {
        what: "manifest",
        hash,
        peers: peers.len(),
    })
}

pub(super) fn answer_name(r: &Response) -> &'static str {
    match r {
        Response::Manifest(_) => "manifest",
        Response::Chunk { .. } => "chunk",
        Response::Have { .. } => "have",
        Response::NotFound(_) => "not-found",
        Response::Busy { .. } => "busy",
        Response::Announcement(_) => "announcement",
        Response::Recent(_) => "recent announcements",
    }
}
