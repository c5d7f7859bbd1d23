//! A hostile peer: a fresh libp2p identity (TCP + Noise + Yamux, raw streams) that connects to a
//! node and speaks its protocols with whatever arguments an attacker picks, plus the paced lane's
//! UDP side with sockets bound to any loopback address.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::net::UdpSocket;
use zdn_protocol::paced::{
    FromSender, PacedRequest, PacedResponse, ReceiverSeal, SessionChunk, ToReceiver, ToSender,
    MAX_PACED_RESPONSE, PACED_PROTOCOL,
};
use zdn_protocol::wire::{ChunkBitmap, Request, Response, CHUNK_PROTOCOL, MAX_RESPONSE_LEN};
use zdn_protocol::Hash;

use crate::frame;
use crate::identity::{peer_in, Identity};

/// How long any one answer may take.
const ANSWER: Duration = Duration::from_secs(20);

/// One hostile identity, connected to one node.
pub struct Hostile {
    pub me: PeerId,
    pub node: PeerId,
    control: libp2p_stream::Control,
    identity: Identity,
}

impl std::fmt::Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hostile")
            .field("me", &self.me)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Hostile {
    /// A fresh identity connected to `addr` (which ends in `/p2p/<peer id>`).
    pub async fn connect(addr: &str) -> anyhow::Result<Hostile> {
        Self::connect_from(addr, None).await
    }

    /// The same, dialing from `from` (any 127.x.y.z).
    pub async fn connect_from(addr: &str, from: Option<IpAddr>) -> anyhow::Result<Hostile> {
        let addr: Multiaddr = addr.parse().context("node address")?;
        let node = peer_in(&addr).ok_or_else(|| anyhow!("the address has no /p2p/ part"))?;
        let (identity, outcomes) = Identity::dial(from, std::slice::from_ref(&addr)).await?;
        match outcomes.into_iter().next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("dial failed: {e}"),
            None => bail!("no dial outcome"),
        }
        Ok(Hostile {
            me: identity.me,
            node,
            control: identity.control.clone(),
            identity,
        })
    }

    /// Whether the connection is still up (the swarm holds one, and a stream opens).
    pub async fn is_connected(&self) -> bool {
        if !self.identity.is_connected_to(&self.node) {
            return false;
        }
        let opened = tokio::time::timeout(
            Duration::from_secs(5),
            self.control
                .clone()
                .open_stream(self.node, StreamProtocol::new(CHUNK_PROTOCOL)),
        )
        .await;
        matches!(opened, Ok(Ok(_)))
    }

    /// A new stream of `protocol` to the node (negotiated, nothing sent).
    pub async fn open(&self, protocol: &'static str) -> anyhow::Result<libp2p::Stream> {
        let s = tokio::time::timeout(
            ANSWER,
            self.control
                .clone()
                .open_stream(self.node, StreamProtocol::new(protocol)),
        )
        .await
        .context("stream not opened in time")??;
        Ok(s)
    }

    /// Sends `requests` one after another on one chunk-protocol stream without waiting, then
    /// reads as many answers (or until the stream ends).
    pub async fn ask_pipelined(&self, requests: &[Request]) -> anyhow::Result<Vec<Response>> {
        let mut s = self.open(CHUNK_PROTOCOL).await?;
        for r in requests {
            frame::write(&mut s, &r.encode()).await?;
        }
        let mut answers = Vec::new();
        for _ in requests {
            match frame::read(&mut s, MAX_RESPONSE_LEN, ANSWER).await {
                Ok(body) => answers.push(Response::decode(&body)?),
                Err(_) => break,
            }
        }
        Ok(answers)
    }

    /// The number of distinct chunks of `object` (from its manifest, asked for on the chunk
    /// protocol).
    pub async fn distinct_chunks(&self, object: Hash) -> anyhow::Result<u32> {
        let m = self.manifest(object).await?;
        let distinct: HashSet<Hash> = m.manifest.chunk_ids().collect();
        Ok(u32::try_from(distinct.len())?)
    }

    /// The signed manifest of `object`, from the node.
    pub async fn manifest(
        &self,
        object: Hash,
    ) -> anyhow::Result<zdn_protocol::manifest::SignedManifest> {
        let mut s = self.open(CHUNK_PROTOCOL).await?;
        frame::write(&mut s, &Request::GetManifest(object).encode()).await?;
        let body = frame::read(&mut s, MAX_RESPONSE_LEN, ANSWER).await?;
        let Response::Manifest(bytes) = Response::decode(&body)? else {
            bail!("GetManifest was not answered with a manifest");
        };
        Ok(zdn_protocol::manifest::decode(&bytes)?)
    }

    /// Opens a paced session for every distinct chunk of `object` at `rate_bps`, with `payload`
    /// bytes per datagram. The session lives while the returned [`PacedSession`] does.
    pub async fn open_paced(
        &self,
        object: Hash,
        rate_bps: u64,
        payload: u16,
    ) -> anyhow::Result<Result<PacedSession, PacedResponse>> {
        self.open_paced_naming(object, rate_bps, payload, 0).await
    }

    /// [`Hostile::open_paced`], the request naming `udp_port` as the port it listens on.
    pub async fn open_paced_naming(
        &self,
        object: Hash,
        rate_bps: u64,
        payload: u16,
        udp_port: u16,
    ) -> anyhow::Result<Result<PacedSession, PacedResponse>> {
        let n = self.distinct_chunks(object).await?;
        let mut stream = self.open(PACED_PROTOCOL).await?;
        let req = PacedRequest {
            object,
            rate_bps,
            payload,
            udp_port,
            wanted: ChunkBitmap::full(n),
            held: Vec::new(),
        };
        frame::write(&mut stream, &req.encode()).await?;
        let body = frame::read(&mut stream, MAX_PACED_RESPONSE, ANSWER).await?;
        Ok(match PacedResponse::decode(&body)? {
            PacedResponse::Ready {
                udp_port,
                key,
                chunks,
                ..
            } => Ok(PacedSession {
                stream,
                udp_port,
                key,
                chunks,
            }),
            other => Err(other),
        })
    }
}

/// A paced session this adversary opened: it knows the key, so what it seals is authentic.
pub struct PacedSession {
    pub stream: libp2p::Stream,
    pub udp_port: u16,
    pub key: [u8; 32],
    pub chunks: Vec<SessionChunk>,
}

impl std::fmt::Debug for PacedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacedSession")
            .field("udp_port", &self.udp_port)
            .finish_non_exhaustive()
    }
}

/// A UDP socket on some loopback address that counts every byte it sends and receives.
#[derive(Debug)]
pub struct CountingSocket {
    pub socket: UdpSocket,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub received_datagrams: u64,
}

impl CountingSocket {
    /// Binds `ip:0` (any 127.x.y.z works on Linux: the whole /8 is loopback).
    pub async fn bind(ip: &str) -> anyhow::Result<CountingSocket> {
        Ok(CountingSocket {
            socket: UdpSocket::bind(format!("{ip}:0")).await?,
            sent_bytes: 0,
            received_bytes: 0,
            received_datagrams: 0,
        })
    }

    pub async fn send_to(&mut self, bytes: &[u8], to: SocketAddr) -> anyhow::Result<()> {
        self.socket.send_to(bytes, to).await?;
        self.sent_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Receives for `dur`, counting; returns the datagrams (at most `keep` of them kept).
    pub async fn drain(&mut self, dur: Duration, keep: usize) -> Vec<Vec<u8>> {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let end = tokio::time::Instant::now() + dur;
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(end, self.socket.recv_from(&mut buf)).await
        {
            self.received_bytes += n as u64;
            self.received_datagrams += 1;
            if kept.len() < keep {
                kept.push(buf[..n].to_vec());
            }
        }
        kept
    }
}

/// Sealed control datagrams of a session whose key the adversary holds.
#[derive(Debug)]
pub struct Sealer {
    seal: ReceiverSeal,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer {
            seal: ReceiverSeal::new(key),
        }
    }

    pub fn seal(&mut self, msg: &ToSender) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal.seal(msg, &mut out);
        out
    }

    /// Opens what the node sent: `Some(nonce)` for a challenge, `None` for data or junk.
    pub fn challenge_in(&mut self, datagram: &[u8]) -> Option<[u8; 8]> {
        let mut d = datagram.to_vec();
        match self.seal.open(&mut d) {
            Ok(FromSender::Control(ToReceiver::Challenge { nonce })) => Some(nonce),
            _ => None,
        }
    }

    /// Whether `datagram` is a data packet of the session.
    pub fn is_data(&mut self, datagram: &[u8]) -> bool {
        let mut d = datagram.to_vec();
        matches!(self.seal.open(&mut d), Ok(FromSender::Data { .. }))
    }
}
