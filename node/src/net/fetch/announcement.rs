//! After fetching an object: its publisher's signed announcement, asked of the peers the fetch
//! used and kept beside the manifest. For a manifest too big for gossip it is what lets this node
//! announce the object in turn (`zdn announce`) though it got it by `zdn fetch HASH`, not by
//! gossip; for any object, what lists it to the peers that catch up from this node
//! (`crate::net::catchup`; a node that serves others asks for it in the background). Best effort: a peer without one answers NotFound and the next is asked; one that sends
//! an announcement that does not verify, or names another manifest or publisher, is counted
//! against (only the publisher can make a valid one).

use libp2p::PeerId;
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::{Announcement, Request, Response, MAX_ANNOUNCEMENT_LEN};

use crate::net::fetch::peers::ask;
use crate::net::handle::NodeHandle;
use crate::net::peers::Offence;

/// Keeps the announcement of `m` (just committed) from the first of `peers` that has it, when the
/// store has none yet.
pub(super) async fn keep_announcement(node: &NodeHandle, m: &SignedManifest, peers: &[PeerId]) {
    let hash = m.hash();
    if !matches!(
        node.store.call(move |s| s.announcement(&hash)).await,
        Ok(None)
    ) {
        return;
    }
    let request = Request::GetAnnouncement(hash);
    for &p in peers.iter().filter(|p| !node.is_banned(p)) {
        let Ok(Response::Announcement(bytes)) =
            ask(node, p, &request, 1 + MAX_ANNOUNCEMENT_LEN).await
        else {
            continue;
        };
        let a = match Announcement::decode(&bytes) {
            Ok(a) if a.manifest == hash && a.verify().is_ok() && a.announces(m) => a,
            _ => {
                node.penalise(p, Offence::BadData).await;
                continue;
            }
        };
        // Kept with the manifest in hand (a copy of its bytes), not read back and decoded again
        // from the store: a manifest this large is megabytes of decoding.
        let manifest = m.clone();
        if node
            .store
            .call(move |s| s.put_announcement_of(&a, &manifest))
            .await
            .is_ok()
        {
            return;
        }
    }
}
