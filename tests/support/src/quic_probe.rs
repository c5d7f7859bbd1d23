//! [`quic_initial_reflection`]: what a node's QUIC listener sends to an address that never
//! proved it receives. A real client's first datagram (a QUIC Initial, made by libp2p's own QUIC
//! transport dialing a relay socket) is sent on to the node from the victim's address and never
//! answered; the victim counts what comes back. A datagram's source is not authenticated, so this
//! is what anyone who forges the victim's address can make the node send it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::net::UdpSocket;

use crate::adversary::CountingSocket;

/// Sends a QUIC client's first flight to `node` (its QUIC listener, peer id `id`) from `victim`
/// and counts what reaches `victim` within `listen`; returns the number of datagrams sent.
pub async fn quic_initial_reflection(
    node: SocketAddr,
    id: PeerId,
    victim: &mut CountingSocket,
    listen: Duration,
) -> anyhow::Result<usize> {
    let relay = UdpSocket::bind("127.0.0.1:0").await?;
    let port = relay.local_addr()?.port();
    let mut client = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .build();
    client.dial(
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{id}").parse::<libp2p::Multiaddr>()?,
    )?;
    let dialing = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    // The client's first flight: its ClientHello may take more than one Initial datagram (a
    // post-quantum key share alone is over 1 KB); retransmissions come later than 200 ms.
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), relay.recv_from(&mut buf))
        .await
        .context("the QUIC client sent nothing")??;
    let mut flight = vec![buf[..n].to_vec()];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(200), relay.recv_from(&mut buf)).await
    {
        flight.push(buf[..n].to_vec());
    }
    dialing.abort();
    for d in &flight {
        victim.send_to(d, node).await?;
    }
    victim.drain(listen, 0).await;
    Ok(flight.len())
}
