//! Serving the paced lane (`/zdn/paced/2`, `zdn_protocol::paced`): a peer asks for chunks of an
//! object at a rate; this node answers with its UDP port, a fresh session key and the session's
//! layout, then sends the chunks as sealed, paced datagrams until the peer has them all, says it is
//! done, goes silent, or closes the stream.
//!
//! What a peer cannot make this node do (each is a test in tests/e2e/adversary/):
//! - send data to an address that has not proven it receives: data goes only to the address that
//!   answered a sealed challenge; a challenge is sent only in answer to a sealed datagram from that
//!   address and is never bigger than it;
//! - outlive its connection: the session ends when its stream closes (the peer hung up, the
//!   connection dropped, the peer was banned) and when the node stops;
//! - send fast or forever: the rate is capped (the node's upload cap, else [`DEFAULT_MAX_RATE_BPS`]),
//!   every session has a byte budget, and a session whose receiver is silent for [`SILENCE`] ends;
//! - take the lane from others: at most [`MAX_SESSIONS`] sessions, [`MAX_SESSIONS_PER_PEER`] per peer.
//!
//! The stop signal, the stream, control datagrams and every deadline are looked at on every turn of
//! the send loop, however high the rate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use zdn_protocol::paced::{
    EndReason, PacedRequest, PacedResponse, PacedSender, PathAction, PathValidator, SenderPoll,
    SenderSeal, SessionChunk, ToReceiver, ToSender, MAX_CONTROL_LEN, MAX_PACED_REQUEST,
    MAX_SESSION_BYTES, MAX_SESSION_CHUNKS, SEAL_OVERHEAD,
};

use crate::store::StoreHandle;

use crate::net::accept::{accept_loop, StreamLimits};
use crate::net::config::Fault;
use crate::net::fetch::chunks::distinct_chunks;
use crate::net::frame::FrameIo;
use crate::net::handle::{Command, PeerInfo, Traffic};
use crate::net::peers::PeerTable;
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
/// A session whose receiver is silent this long ends.
pub const SILENCE: Duration = Duration::from_secs(90);
/// A session no address of the receiver's has validated in this long ends.
const FIRST_CONTACT: Duration = Duration::from_secs(20);
/// The rate ceiling of one session when the node has no upload cap (IP bits per second).
pub const DEFAULT_MAX_RATE_BPS: u64 = 100_000_000;
/// Bytes a session may send: this many times its bytes, plus [`BUDGET_SLACK`] (outages and loss
/// cost retransmissions; a session that spends it ends, and the receiver asks again).
const BUDGET_FACTOR: u64 = 4;
const BUDGET_SLACK: u64 = 16 << 20;
/// Datagrams sent before the send loop yields to the runtime.
const SENDS_PER_TURN: u32 = 32;
/// Control datagrams read per turn of the send loop.
const READS_PER_TURN: u32 = 64;

pub(crate) struct PacedServer {
    pub peer_table: Arc<PeerTable>,
    /// To ask the event loop where a peer is; weak, so the server does not keep the node alive.
    pub commands: mpsc::WeakSender<Command>,
    pub store: StoreHandle,
    pub progress_timeout: Duration,
    /// The node's upload cap, bits per second.
    pub max_rate_bps: Option<u64>,
    pub traffic: Arc<Traffic>,
    pub fault: Option<Fault>,
}

/// Sessions running now, in all and per peer.
#[derive(Default)]
struct Sessions {
    total: usize,
    per_peer: HashMap<PeerId, usize>,
}

/// One session's place among the running ones; given back when dropped.
struct Slot {
    sessions: Arc<Mutex<Sessions>>,
    peer: PeerId,
}

impl Slot {
    fn take(sessions: &Arc<Mutex<Sessions>>, peer: PeerId) -> Option<Slot> {
        let mut s = sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mine = s.per_peer.get(&peer).copied().unwrap_or(0);
        if s.total >= MAX_SESSIONS || mine >= MAX_SESSIONS_PER_PEER {
            return None;
        }
        s.total += 1;
        s.per_peer.insert(peer, mine + 1);
        Some(Slot {
            sessions: sessions.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.per_peer.remove(&self.peer);
            }
        }
    }
}

impl PacedServer {
    pub async fn run(self, incoming: Incoming, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let sessions = Arc::new(Mutex::new(Sessions::default()));
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
        sessions: Arc<Mutex<Sessions>>,
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
        let Some(_slot) = Slot::take(&sessions, peer) else {
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

        // The session lives as long as its stream: anything read from it, its end or an error
        // (the peer hung up, the connection dropped, the peer was banned) ends the session.
        let (closed_tx, closed) = oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let mut b = [0u8; 64];
            let _ = rd.read(&mut b).await;
            let _ = closed_tx.send(());
        });
        let overhead = match ip {
            IpAddr::V4(_) => 28,
            IpAddr::V6(_) => 48,
        };
        let session = Session {
            socket,
            seal: SenderSeal::new(&key),
            tx: PacedSender::new(
                bytes.len() as u64,
                req.payload,
                self.cap(req.rate_bps),
                overhead,
                rtt.unwrap_or(Duration::from_secs(1)),
            ),
            budget: (bytes.len() as u64)
                .saturating_mul(BUDGET_FACTOR)
                .saturating_add(BUDGET_SLACK),
            bytes,
        };
        let end = self.send(session, stop, closed).await;
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

    /// The wanted chunks that this node has, as a session (at most 64 MiB); `None` when it has
    /// none of them.
    async fn load(&self, req: &PacedRequest) -> Result<Option<SessionBytes>, String> {
        let object = req.object;
        let wanted = req.wanted.clone();
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
                        let after = bytes.len() as u64 + stored.len() as u64;
                        if after > MAX_SESSION_BYTES || layout.len() as u32 >= MAX_SESSION_CHUNKS {
                            break;
                        }
                        layout.push(SessionChunk {
                            chunk: i as u32,
                            stored_len: stored.len() as u32,
                        });
                        bytes.extend_from_slice(&stored);
                    }
                    Ok((!layout.is_empty()).then_some((layout, bytes)))
                },
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// The send loop of one session; returns why it ended.
    async fn send(
        &self,
        mut s: Session,
        mut stop: watch::Receiver<bool>,
        mut closed: oneshot::Receiver<()>,
    ) -> EndReason {
        let t0 = Instant::now();
        let mut path = PathValidator::<SocketAddr>::new();
        let mut last_heard: Option<Instant> = None;
        let mut sent_bytes = 0u64;
        let mut out = Vec::with_capacity(usize::from(u16::MAX));
        loop {
            // Every turn, however high the rate: the stop signal, the stream, the receiver's
            // datagrams, the deadlines.
            if stop.has_changed().unwrap_or(true) {
                return EndReason::Shutdown;
            }
            if !matches!(closed.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return EndReason::Complete;
            }
            match self.read_control(&mut s, &mut path, t0).await {
                Some(Heard::Done) => return EndReason::Complete,
                Some(Heard::Something) => last_heard = Some(Instant::now()),
                None => {}
            }
            if sent_bytes > s.budget {
                return EndReason::Budget;
            }
            match last_heard {
                Some(t) if t.elapsed() > SILENCE => return EndReason::Silent,
                _ if path.target().is_none() && t0.elapsed() > FIRST_CONTACT => {
                    return EndReason::Unreachable
                }
                _ => {}
            }
            let mut wake = Instant::now() + Duration::from_millis(50);
            if let Some(target) = path.target() {
                let mut sends = 0;
                loop {
                    match s.tx.poll(t0.elapsed()) {
                        SenderPoll::Done => return EndReason::Complete,
                        SenderPoll::Wait(at) => {
                            wake = t0 + at;
                            break;
                        }
                        SenderPoll::Send(seq) => {
                            let (off, len) = s.tx.span(seq);
                            let off = off as usize;
                            s.seal.seal_data(seq, &s.bytes[off..off + len], &mut out);
                            // A send error (no route during an outage) is a lost datagram.
                            if s.socket.send_to(&out, target).await.is_ok() {
                                self.traffic
                                    .chunk_bytes_served
                                    .fetch_add(len as u64, Ordering::Relaxed);
                            }
                            sent_bytes += out.len() as u64;
                            sends += 1;
                            if sends >= SENDS_PER_TURN || sent_bytes > s.budget {
                                wake = Instant::now();
                                break;
                            }
                        }
                    }
                }
            }
            if wake <= Instant::now() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
                _ = &mut closed => {}
                _ = s.socket.readable() => {}
            }
        }
    }
}

/// What the control datagrams of one turn said.
enum Heard {
    /// At least one opened (the receiver is there).
    Something,
    /// The receiver said Done.
    Done,
}

impl PacedServer {
    /// Reads the control datagrams waiting (at most [`READS_PER_TURN`]): acknowledgements feed the
    /// sender, responses validate their address, and every other address that sends a sealed
    /// datagram is challenged. What does not open is counted and dropped.
    async fn read_control(
        &self,
        s: &mut Session,
        path: &mut PathValidator<SocketAddr>,
        t0: Instant,
    ) -> Option<Heard> {
        let mut heard = None;
        let mut inbox = [0u8; MAX_CONTROL_LEN + SEAL_OVERHEAD + 1];
        let mut out = Vec::new();
        for _ in 0..READS_PER_TURN {
            let Ok((n, from)) = s.socket.try_recv_from(&mut inbox) else {
                break;
            };
            let now = t0.elapsed();
            let Ok(msg) = s.seal.open(&mut inbox[..n]) else {
                self.traffic.paced_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            heard = Some(Heard::Something);
            let action = match msg {
                ToSender::Response { nonce } => {
                    path.on_response(from, nonce);
                    PathAction::Nothing
                }
                ToSender::Done => return Some(Heard::Done),
                ToSender::Ack {
                    rate_bps,
                    cumulative,
                    ranges,
                } => {
                    s.tx.on_ack(now, self.cap(rate_bps), cumulative, &ranges);
                    path.on_datagram(from, n, now, fresh_nonce)
                }
                ToSender::Hello => path.on_datagram(from, n, now, fresh_nonce),
            };
            if let PathAction::Challenge { to, nonce } = action {
                if s.seal
                    .seal_control(&ToReceiver::Challenge { nonce }, &mut out)
                {
                    let _ = s.socket.send_to(&out, to).await;
                }
            }
        }
        heard
    }
}

/// One session's socket, keys, sender and bytes.
struct Session {
    socket: UdpSocket,
    seal: SenderSeal,
    tx: PacedSender,
    /// Bytes it may still send, datagrams and headers counted.
    budget: u64,
    bytes: Vec<u8>,
}

/// A challenge nonce from the OS's CSPRNG (all zero only if it fails, which only weakens that one
/// challenge: a zero nonce is still unknown to an off-path attacker without the session key).
fn fresh_nonce() -> [u8; 8] {
    let mut n = [0u8; 8];
    let _ = getrandom::getrandom(&mut n);
    n
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
