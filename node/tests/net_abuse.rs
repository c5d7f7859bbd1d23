//! A node under abuse on the chunk protocol — oversized frames, malformed requests, streams that
//! never send, requests for unknown hashes, a flood of streams — stays up and keeps serving an
//! honest fetch. Real libp2p (TCP+Noise+Yamux on 127.0.0.1) and real rocksdb stores, in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use zdn_node::net::{fetch, FetchOptions, Keypair, Node, NodeConfig, Profile};
use zdn_node::store::{AddOptions, ObjectStore, StoreHandle, StoreLimits, TrustPolicy};
use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::wire::{Request, Response};
use zdn_protocol::Hash;

fn safetensors(n: usize) -> Vec<u8> {
    let layout = zdn_protocol::safetensors::TensorLayout {
        name: "w".into(),
        dtype: zdn_protocol::DType::U8,
        shape: vec![n as u64],
    };
    let (mut f, _) =
        zdn_protocol::safetensors::encode_header(&[layout], &Default::default()).unwrap();
    f.extend((0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    f
}

async fn node(
    dir: &std::path::Path,
    listen: bool,
    trust: Vec<[u8; 32]>,
) -> (Node, tokio::sync::oneshot::Sender<()>) {
    let store =
        StoreHandle::spawn(ObjectStore::open(dir, StoreLimits::default()).unwrap()).unwrap();
    let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Datacenter);
    c.mdns = Some(false);
    if listen {
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    }
    c.trust = TrustPolicy {
        trusted: trust,
        any: false,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let n = Node::spawn(c, store, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    (n, tx)
}

/// Sends raw bytes on a fresh stream and returns what comes back before the stream ends (or
/// `None` when the node reset it or said nothing within 10 s).
async fn raw(abuser: &Node, peer: libp2p_identity_peer::PeerId, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = abuser.handle.open_chunk_stream(peer).await.ok()?;
    s.write_all(bytes).await.ok()?;
    // End our side: the node answers what it has and then sees the end of the requests.
    s.close().await.ok()?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Some(out),
        _ => None,
    }
}

mod libp2p_identity_peer {
    pub use zdn_node::net::PeerId;
}

/// Resident memory of this process, KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abused_node_stays_up_and_serves_honest_fetches() {
    let tmp = tempfile::tempdir().unwrap();
    let key = PublisherKey::from_seed(&[3; 32]);
    let seed_dir = tmp.path().join("seed");
    let hash = {
        let s = ObjectStore::open(&seed_dir, StoreLimits::default()).unwrap();
        let mut o = AddOptions::new(Kind::Base, "obj");
        o.chunk_size = 64 * 1024;
        s.add(&safetensors(1 << 20), &o, &key).unwrap().0.hash()
    };
    let (seeder, _stop_seeder) = node(&seed_dir, true, vec![]).await;
    let addr = seeder.handle.listen_addrs().await.unwrap()[0].clone();
    let (abuser, _stop_abuser) = node(&tmp.path().join("abuser"), false, vec![]).await;
    let peer = abuser.handle.dial(addr.clone()).await.unwrap();

    let rss_before = rss_kib();
    // Frame lengths over the request cap (4 GiB claimed, 100 times): closed without an answer,
    // nothing allocated.
    for _ in 0..100 {
        let r = raw(&abuser, peer, &u32::MAX.to_le_bytes()).await;
        assert!(r.as_ref().is_none_or(|b| b.is_empty()), "{r:?}");
    }
    let r = raw(&abuser, peer, &u32::MAX.to_le_bytes()).await;
    assert!(r.as_ref().is_none_or(|b| b.is_empty()), "{r:?}");
    // A malformed request: closed without an answer.
    let r = raw(&abuser, peer, &frame(&[9; 33])).await;
    assert!(r.as_ref().is_none_or(|b| b.is_empty()), "{r:?}");
    // An unknown hash: NotFound.
    let unknown = Hash::of(b"nothing");
    let r = raw(
        &abuser,
        peer,
        &frame(&Request::GetManifest(unknown).encode()),
    )
    .await
    .unwrap();
    assert_eq!(
        Response::decode(&r[4..]).unwrap(),
        Response::NotFound(unknown)
    );
    // A flood: 200 streams that never send a request (over the per-peer cap), held open.
    let mut held = Vec::new();
    for _ in 0..200 {
        let open = abuser.handle.open_chunk_stream(peer);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), open).await {
            held.push(s);
        }
    }

    // An honest fetch still completes while the flood is held open.
    let (honest, _stop_honest) = node(&tmp.path().join("honest"), false, vec![key.public()]).await;
    let opts = FetchOptions {
        peers: vec![addr],
        ..Default::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        fetch(&honest.handle, hash, &opts, &mut |_| {}),
    )
    .await
    .expect("fetch finished")
    .unwrap();
    assert_eq!(report.object_len, safetensors(1 << 20).len() as u64);
    // Memory stayed bounded: the process (three nodes, a 1 MiB object) grew by far less than
    // one of the lengths it was offered.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 128 * 1024, "RSS grew by {grown} KiB under abuse");
    let got = honest
        .handle
        .store()
        .call(move |s| s.get_bytes(&hash))
        .await
        .unwrap();
    assert_eq!(got, safetensors(1 << 20));
    drop(held);
}
