//! Streams between two in-process nodes over real libp2p (TCP+Noise+Yamux on 127.0.0.1) and real
//! stores: negotiated lazily, a request goes with the protocol's name, and a protocol the peer
//! does not speak fails on the first read, recognisably.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::StreamProtocol;
use tokio::sync::oneshot;
use zdn_protocol::wire::{Request, Response};
use zdn_protocol::Hash;

use crate::net::frame::FrameIo;
use crate::net::{Keypair, Node, NodeConfig, Profile};
use crate::store::{ObjectStore, StoreHandle, StoreLimits};

async fn node(dir: &std::path::Path, listen: bool) -> (Node, oneshot::Sender<()>) {
    let store =
        StoreHandle::spawn(ObjectStore::open(dir, StoreLimits::default()).unwrap()).unwrap();
    let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Datacenter);
    c.mdns = Some(false);
    if listen {
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    }
    let (tx, rx) = oneshot::channel::<()>();
    let n = Node::spawn(c, store, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    (n, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_rides_with_the_protocol_name_and_an_unknown_protocol_fails_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _stop_server) = node(&tmp.path().join("server"), true).await;
    let (client, _stop_client) = node(&tmp.path().join("client"), false).await;
    let addr = server.handle.listen_addrs().await.unwrap()[0].clone();
    let peer = client.handle.dial(addr).await.unwrap();
    let io = FrameIo::new(Duration::from_secs(10));

    // The chunk protocol: asked and answered on one new stream.
    let unknown = Hash::of(b"nothing here");
    let (mut rd, mut wr) = client.handle.open_chunk_stream(peer).await.unwrap().split();
    io.write(&mut wr, "request", &Request::GetManifest(unknown).encode())
        .await
        .unwrap();
    let answer = io.read(&mut rd, "answer", 1024, &mut |_| {}).await.unwrap();
    assert_eq!(
        Response::decode(&answer).unwrap(),
        Response::NotFound(unknown)
    );

    // A protocol the server does not speak: the stream opens (its name is sent with the first
    // bytes), and the refusal comes as the first read's error.
    let none = StreamProtocol::new("/zdn/none/1");
    let stream = client
        .handle
        .control
        .clone()
        .open_stream(peer, none)
        .await
        .expect("a lazily negotiated stream opens without a round trip");
    let (mut rd, mut wr) = stream.split();
    let _ = io.write(&mut wr, "request", b"anything").await;
    let err = io
        .read(&mut rd, "answer", 1024, &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.unsupported_protocol(), "{err}");

    // An error of another kind is not taken for one.
    let (mut rd, wr) = client.handle.open_chunk_stream(peer).await.unwrap().split();
    drop(wr);
    drop(server);
    let err = io
        .read(&mut rd, "answer", 1024, &mut |_| {})
        .await
        .unwrap_err();
    assert!(!err.unsupported_protocol(), "{err}");
}
