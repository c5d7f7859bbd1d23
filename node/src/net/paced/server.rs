//! Serving the paced lane (`/zdn/paced/3`, `zdn_protocol::paced`): a peer asks for chunks of an
//! object, saying which byte ranges of some it already holds and at most what rate; this node
//! answers with its UDP port, a fresh session key and the session's layout, then sends what is
//! missing as sealed datagrams, paced at the rate its rate control finds (`sending.rs`), until the
//! peer has it all, says it is done, closes the stream, or is silent too long.
//!
//! What a peer cannot make this node do (each is a test in tests/e2e/adversary/):
//! - send data to an address that has not proven it receives: data goes only to the address that
//!   answered a sealed challenge; a challenge is sent only in answer to a sealed datagram from that
//!   address and is never bigger than it;
//! - outlive its connection as a sender: when the session's stream closes the session ends; when
//!   it breaks (the connection died, in an outage say) the session parks: it sends nothing at all
//!   until a sealed datagram of its receiver comes from an address that answers a new challenge,
//!   and a banned peer's parked session never resumes;
//! - send fast or forever: the rate is capped (the node's upload cap, else [`DEFAULT_MAX_RATE_BPS`]),
//!   every session has a byte budget, and a session whose receiver is silent for [`SILENCE`] ends;
//! - make it send more than the chunks: held ranges only remove bytes from a session; they are
//!   checked (canonical, inside the chunk, counts capped) before anything is taken from them;
//! - take the lane from others: at most [`MAX_SESSIONS`] sessions, [`MAX_SESSIONS_PER_PEER`] per
//!   peer; an idle session (receiver silent, or parked) gives way to a new request.
//!
//! The stop signal, the stream, control datagrams and every deadline are looked at on every turn of
//! the send loop, however high the rate.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use zdn_protocol::paced::{
    can_resume, to_send, EndReason, PacedRequest, PacedResponse, PacedSender, SenderSeal,
    SessionChunk, MAX_PACED_REQUEST, MAX_SESSION_BYTES, MAX_SESSION_CHUNKS,
};

use crate::store::StoreHandle;

use crate::net::accept::{accept_loop, StreamLimits};
use crate::net::config::Fault;
use crate::net::fetch::chunks::distinct_chunks;
use crate::net::frame::FrameIo;
use crate::net::handle::{Command, PeerInfo, Traffic};
use crate::net::paced::recent::RecentLinks;
use crate::net::paced::sending::{Closed, Session};
use crate::net::paced::slots::Slots;
use crate::net::peers::{PeerScores, PeerTable};
use crate::net::streams::Incoming;

/// Sessions served at once, all peers together.
pub const MAX_SESSIONS: usize = 8;
/// Sessions one peer may hold at once.
pub const MAX_SESSIONS_PER_PEER: usize = 2;
/// Streams taken at once (a session's, and requests not yet read): more are reset unread.
const STREAM_LIMITS: StreamLimits = StreamLimits {
    total: 4 * MAX_SESSIONS,
    per_peer: MAX_SESSIONS_PER_PEER + 2,
    reserved: MAX_SESSIONS,
};
/// A session whose receiver is silent this long ends (its receiver probes every few seconds while
/// it waits through an outage; this outlasts the field profile's 45-minute patience).
pub const SILENCE: Duration = Duration::from_secs(50 * 60);
/// The rate ceiling of one session when the node has no upload cap (IP bits per second).
pub const DEFAULT_MAX_RATE_BPS: u64 = 100_000_000;
/// Bytes a session may send: this many times its bytes, plus [`BUDGET_SLACK`] (outages and loss
/// cost retransmissions; a session that spends it ends, and the receiver asks again).
const BUDGET_FACTOR: u64 = 4;
const BUDGET_SLACK: u64 = 16 << 20;

pub(crate) struct PacedServer {
    pub peer_table: Arc<PeerTable>,
    /// The node-wide peer scores: a banned peer's parked session never resumes.
    pub scores: Arc<PeerScores>,
    /// To ask the event loop where a peer is; weak, so the server does not keep the node alive.
    pub commands: mpsc::WeakSender<Command>,
    pub store: StoreHandle,
    pub progress_timeout: Duration,
    /// The node's upload cap, bits per second.
    pub max_rate_bps: Option<u64>,
    pub traffic: Arc<Traffic>,
    pub fault: Option<Fault>,
    /// Each receiver's link as its last session found it: the next session starts there.
    pub links: RecentLinks,
}

/// How long a completed session's socket stays open, reading and dropping what comes: the
/// receiver says `Done` three times as it completes, and a closed port would answer each late copy
/// with an ICMP port-unreachable (77 bytes down the receiver's link, each).
const LINGER: Duration = Duration::from_secs(2);

/// After a complete session, keeps `socket` open for [`LINGER`], discarding every datagram, then
/// closes it; after any other end, closes it now.
fn linger_if_complete(end: EndReason, socket: UdpSocket) {
    if end != EndReason::Complete {
        return;
    }
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + LINGER;
        let mut buf = [0u8; 64];
        while let Ok(Ok(_)) = tokio::time::timeout_at(end, socket.recv_from(&mut buf)).await {}
    });
}

/// A UDP socket of the receiver's address family on a port of the system's choosing, and that
/// port.
async fn lane_socket(ip: IpAddr) -> Result<(UdpSocket, u16), String> {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => "0.0.0.0:0",
        IpAddr::V6(_) => "[::]:0",
    }
    .parse()
    .map_err(|_| "bind address")?;
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("UDP bind: {e}"))?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    Ok((socket, port))
}

impl PacedServer {
    pub async fn run(self, incoming: Incoming, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let sessions = Slots::new(MAX_SESSIONS, MAX_SESSIONS_PER_PEER);
        let stop_all = stop.clone();
        let places = (STREAM_LIMITS, this.peer_table.clone(), this.traffic.clone());
        accept_loop(incoming, stop, places, move |peer, stream, admitted| {
            let (this, sessions, stop) = (this.clone(), sessions.clone(), stop_all.clone());
            async move {
                let _admitted = admitted;
                // A session that fails ends; the receiver's side says why it stopped.
                let _ = this.serve(peer, stream, sessions, stop).await;
            }
        })
        .await;
    }

    async fn serve(
        &self,
        peer: PeerId,
        stream: Stream,
        sessions: Slots,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (mut rd, mut wr) = stream.split();
        let io = FrameIo::new(self.progress_timeout);
        let body = io
            .read(&mut rd, "paced request", MAX_PACED_REQUEST, &mut |_| {})
            .await
            .map_err(|e| e.to_string())?;
        let req = PacedRequest::decode(&body).map_err(|e| e.to_string())?;
        let reply = |r: PacedResponse| r.encode();
        let Some(slot) = sessions.take(peer) else {
            let busy = reply(PacedResponse::Busy {
                retry_after_ms: 5_000,
            });
            return io
                .write(&mut wr, "paced response", &busy)
                .await
                .map_err(|e| e.to_string());
        };
        let Some((layout, bytes)) = self.load(&req).await? else {
            let nf = reply(PacedResponse::NotFound(req.object));
            return io
                .write(&mut wr, "paced response", &nf)
                .await
                .map_err(|e| e.to_string());
        };

        let commands = self.commands.upgrade().ok_or("the node stopped")?;
        let (ip, rtt) = peer_path(&commands, peer)
            .await
            .ok_or("no address for the peer")?;
        drop(commands);
        let (socket, port) = lane_socket(ip).await?;
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("no randomness: {e}"))?;
        let ready = reply(PacedResponse::Ready {
            udp_port: port,
            payload: req.payload,
            key,
            chunks: layout,
        });
        io.write(&mut wr, "paced response", &ready)
            .await
            .map_err(|e| e.to_string())?;

        // Anything read from the stream or its end closes the session; an error (the connection
        // dropped, the peer was banned) parks it.
        let (closed_tx, closed) = oneshot::channel::<Closed>();
        let watcher = tokio::spawn(async move {
            let mut b = [0u8; 64];
            let how = match rd.read(&mut b).await {
                Ok(_) => Closed::Clean,
                Err(_) => Closed::Broken,
            };
            let _ = closed_tx.send(how);
        });
        let overhead = match ip {
            IpAddr::V4(_) => 28,
            IpAddr::V6(_) => 48,
        };
        let cap = self.cap(u64::MAX);
        let stated = (req.rate_bps != 0).then(|| self.cap(req.rate_bps));
        let mut tx = PacedSender::new(
            bytes.len() as u64,
            req.payload,
            stated,
            cap,
            overhead,
            rtt.unwrap_or(Duration::from_secs(1)),
        );
        if let (None, Some(link)) = (stated, self.links.recent(&peer)) {
            tx.resume(link);
        }
        let mut session = Session {
            socket,
            seal: SenderSeal::new(&key),
            tx,
            budget: (bytes.len() as u64)
                .saturating_mul(BUDGET_FACTOR)
                .saturating_add(BUDGET_SLACK),
            bytes,
            peer,
            slot: slot.state.clone(),
            named: (req.udp_port != 0).then(|| SocketAddr::new(ip, req.udp_port)),
        };
        let end = self.send(&mut session, stop, closed).await;
        drop(slot);
        linger_if_complete(end, session.socket);
        watcher.abort();
        // Tell the receiver why, if it is still there; a receiver that is gone misses nothing.
        let _ = io
            .write(&mut wr, "paced response", &reply(PacedResponse::Ended(end)))
            .await;
        Ok(())
    }

    /// The session's rate ceiling applied to a rate a receiver asks for.
    fn cap(&self, rate_bps: u64) -> u64 {
        rate_bps.min(self.max_rate_bps.unwrap_or(DEFAULT_MAX_RATE_BPS))
    }

    /// The wanted chunks that this node has, as a session (at most 64 MiB of chunks), each whole
    /// or, when the request held some of it, its missing bytes; `None` when it has none of them.
    async fn load(&self, req: &PacedRequest) -> Result<Option<SessionBytes>, String> {
        let object = req.object;
        let wanted = req.wanted.clone();
        let held = req.held.clone();
        let corrupt = self.fault == Some(Fault::CorruptChunks);
        self.store
            .call(
                move |s| -> Result<Option<SessionBytes>, crate::store::StoreError> {
                    let Some(m) = s.manifest(&object)? else {
                        return Ok(None);
                    };
                    let (distinct, _) = distinct_chunks(&m);
                    if wanted.len() as usize != distinct.len() {
                        return Ok(None);
                    }
                    let (mut layout, mut bytes) = (Vec::new(), Vec::new());
                    let mut stored_total: u64 = 0;
                    for (i, r) in distinct.iter().enumerate() {
                        if !wanted.get(i as u32) {
                            continue;
                        }
                        let Some(mut stored) = s.chunk(&r.id)? else {
                            continue;
                        };
                        if corrupt {
                            if let Some(b) = stored.last_mut() {
                                *b ^= 0x55;
                            }
                        }
                        stored_total += stored.len() as u64;
                        if stored_total > MAX_SESSION_BYTES
                            || layout.len() as u32 >= MAX_SESSION_CHUNKS
                        {
                            break;
                        }
                        let len = stored.len() as u32;
                        let c = SessionChunk {
                            chunk: i as u32,
                            stored_len: len,
                            resumed: held
                                .binary_search_by_key(&(i as u32), |h| h.chunk)
                                .is_ok_and(|k| can_resume(&held[k].ranges, len)),
                        };
                        // Checked above: a resumed chunk's held ranges lie inside it.
                        let Ok(send) = to_send(&c, &held) else {
                            continue;
                        };
                        for &(off, n) in send.as_slice() {
                            bytes.extend_from_slice(&stored[off as usize..(off + n) as usize]);
                        }
                        layout.push(c);
                    }
                    Ok((!layout.is_empty()).then_some((layout, bytes)))
                },
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// A session's layout and its bytes, in that order.
type SessionBytes = (Vec<SessionChunk>, Vec<u8>);

/// The IP address a connected peer's connection comes from, and its last ping round trip.
pub(crate) async fn peer_path(
    commands: &mpsc::Sender<Command>,
    peer: PeerId,
) -> Option<(IpAddr, Option<Duration>)> {
    let (reply, rx) = oneshot::channel::<Vec<PeerInfo>>();
    commands.send(Command::Peers { reply }).await.ok()?;
    let info = rx
        .await
        .ok()?
        .into_iter()
        .find(|p| p.peer == peer.to_string())?;
    let ip = info.addresses.iter().find_map(|a| {
        let m: libp2p::Multiaddr = a.parse().ok()?;
        m.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })
    })?;
    Some((ip, info.rtt_ms.map(Duration::from_millis)))
}
