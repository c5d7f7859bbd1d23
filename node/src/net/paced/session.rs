//! The receiving side of the paced lane (`zdn_protocol::paced`): used by [`crate::net::fetch()`] when the
//! node knows its link's rate (`--link-rate`). It asks one peer for the missing chunks, answers
//! the datagrams with acknowledgements every 40 ms that carry the rate wanted (the node's link rate
//! shared by its sessions), and hands each chunk whose packets are all here to the fetch, which
//! verifies it before storing it. What the lane does not bring (a peer without it, a session that
//! goes silent, a chunk that fails verification) is left to the chunk streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zdn_protocol::paced::{
    FromSender, PacedReceiver, PacedRequest, PacedResponse, ReceiverSeal, ToReceiver, ToSender,
    MAX_PACED_RESPONSE, MAX_PAYLOAD, PACED_PROTOCOL, SEAL_OVERHEAD,
};
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::wire::ChunkBitmap;
use zdn_protocol::Hash;

use crate::net::fetch::second_of_day;
use crate::net::frame::FrameIo;
use crate::net::handle::NodeHandle;
use crate::net::paced::server::peer_path;
use crate::net::streams::OpenStreamError;

pub(crate) const PACED_STREAM: StreamProtocol = StreamProtocol::new(PACED_PROTOCOL);

/// Payload per datagram: a 1500-byte IPv4 packet less 20 (IP), 8 (UDP), 4 (packet number) and
/// 16 (authentication tag).
const PAYLOAD_V4: u16 = 1448;
/// The same for IPv6 (40-byte header).
const PAYLOAD_V6: u16 = 1428;
const ACK_EVERY: Duration = Duration::from_millis(40);
/// An ack goes out this often even when nothing arrived (through an outage, so the sender
/// hears from us the moment the link returns).
const ACK_IDLE: Duration = Duration::from_millis(500);
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// A session that brings nothing for this long is given up (the chunk streams take over).
const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// ... and sooner when not one datagram has come (UDP blocked on the way, say).
const FIRST_DATA_LIMIT: Duration = Duration::from_secs(15);
/// ICMP "port unreachable" answers in a row that end a session.
const PORT_CLOSED_AFTER: u32 = 3;

/// The node's link, shared by its sessions.
#[derive(Debug)]
pub struct PacedLane {
    /// The link's rate, IP bits per second.
    pub rate_bps: u64,
    active: AtomicUsize,
}

impl PacedLane {
    pub fn new(rate_bps: u64) -> Self {
        PacedLane {
            rate_bps,
            active: AtomicUsize::new(0),
        }
    }

    /// This session's share of the link now.
    fn share(&self) -> u64 {
        self.rate_bps / self.active.load(Ordering::Relaxed).max(1) as u64
    }
}

/// What the paced lane did in one fetch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PacedReport {
    pub peer: String,
    pub sessions: u32,
    /// Chunks it brought that verified.
    pub chunks: u64,
    /// Datagrams received, and of those carrying a packet already here.
    pub datagrams: u64,
    pub duplicates: u64,
    /// Payload bytes received, duplicates included.
    pub payload_bytes: u64,
    /// Times the peer had gone silent (an outage, a restart) and was asked again for the rest;
    /// through a long outage, one per try.
    #[serde(default)]
    pub resumes: u32,
    /// Why it went silent the last time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_silence: Option<String>,
    /// Why it stopped before every chunk, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// How one session ended.
pub(crate) enum SessionEnd {
    /// Every chunk of the session arrived.
    Complete,
    /// The peer has none of the chunks asked for.
    NotFound,
    /// The sync window closed: the sender was told to stop.
    WindowClosed,
}

/// Why a session stopped early.
#[derive(Debug)]
pub(crate) struct SessionError {
    pub reason: String,
    /// The peer or the link went quiet (an outage, a restart, a busy peer): asking again later
    /// may work. Otherwise (an answer that does not parse, a local failure) it will not.
    pub silent: bool,
}

impl SessionError {
    pub fn silent(reason: impl Into<String>) -> Self {
        SessionError {
            reason: reason.into(),
            silent: true,
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Self {
        SessionError {
            reason: reason.into(),
            silent: false,
        }
    }
}

/// Counts this session in the lane's share while it lives.
struct Active(Arc<PacedLane>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One session: asks `peer` for the `wanted` chunks of `object`; each chunk whose packets are all
/// here goes to `chunks` as (index among the object's distinct chunks, stored bytes). Ends when
/// the session is complete; an error says why it stopped early.
pub(crate) async fn session(
    node: &NodeHandle,
    lane: Arc<PacedLane>,
    (peer, object, wanted): (PeerId, Hash, ChunkBitmap),
    chunks: &mpsc::UnboundedSender<(u32, Vec<u8>)>,
    received: &AtomicU64,
    windows: &SyncWindows,
    report: &mut PacedReport,
) -> Result<SessionEnd, SessionError> {
    lane.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(lane.clone());
    let opened = match open(node, &lane, peer, object, &wanted).await? {
        Opening::Ready(o) => o,
        Opening::NotFound => return Ok(SessionEnd::NotFound),
    };
    report.sessions += 1;
    let Opened {
        socket,
        rx,
        seal,
        rd,
        mut wr,
    } = *opened;
    let mut run = Receiving {
        node,
        lane: &lane,
        socket,
        seal,
        rx,
        out: Vec::with_capacity(usize::from(MAX_PAYLOAD)),
    };
    let result = run.receive(rd, chunks, received, windows).await;
    if run.rx.is_complete() || matches!(result, Ok(SessionEnd::WindowClosed)) {
        // Done also stops a sender outside the sync window. Said three times; closing the stream
        // (below) ends the session at the sender in any case.
        for _ in 0..3 {
            run.send(&ToSender::Done);
        }
    }
    let _ = futures::AsyncWriteExt::close(&mut wr).await;
    let s = run.rx.stats();
    report.datagrams += u64::from(s.received) + s.duplicates;
    report.duplicates += s.duplicates;
    report.payload_bytes += s.payload_bytes;
    result
}

type StreamRead = futures::io::ReadHalf<libp2p::Stream>;
type StreamWrite = futures::io::WriteHalf<libp2p::Stream>;

/// A session the sender agreed to: its socket (connected to the sender's port), the receiver's
/// state, the keys, and the stream it lives on.
struct Opened {
    socket: UdpSocket,
    rx: PacedReceiver,
    seal: ReceiverSeal,
    rd: StreamRead,
    wr: StreamWrite,
}

enum Opening {
    Ready(Box<Opened>),
    /// The peer has none of the chunks asked for.
    NotFound,
}

/// Asks `peer` on a new lane stream for the `wanted` chunks of `object` and checks its answer.
async fn open(
    node: &NodeHandle,
    lane: &PacedLane,
    peer: PeerId,
    object: Hash,
    wanted: &ChunkBitmap,
) -> Result<Opening, SessionError> {
    let (ip, _) = peer_path(&node.commands, peer)
        .await
        .ok_or_else(|| SessionError::silent("not connected to the peer"))?;
    let (bind, payload) = match ip {
        IpAddr::V4(_) => ("0.0.0.0:0", PAYLOAD_V4),
        IpAddr::V6(_) => ("[::]:0", PAYLOAD_V6),
    };
    let bind: SocketAddr = bind
        .parse()
        .map_err(|_| SessionError::fatal("bind address"))?;
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| SessionError::fatal(format!("UDP bind: {e}")))?;
    let req = PacedRequest {
        object,
        rate_bps: lane.share(),
        payload,
        wanted: wanted.clone(),
    };
    let stream = node
        .control
        .clone()
        .open_stream(peer, PACED_STREAM)
        .await
        .map_err(|e| match e {
            OpenStreamError::UnsupportedProtocol(_) => {
                SessionError::fatal(format!("the peer does not offer the paced lane: {e}"))
            }
            e => SessionError::silent(format!("opening the paced lane: {e}")),
        })?;
    let (mut rd, mut wr) = stream.split();
    let io = FrameIo {
        progress_timeout: node.tuning.progress_timeout,
        limiter: None,
    };
    io.write(&mut wr, "paced request", &req.encode())
        .await
        .map_err(|e| SessionError::silent(e.to_string()))?;
    let body = io
        .read(&mut rd, "paced response", MAX_PACED_RESPONSE, &mut |_| {})
        .await
        .map_err(|e| SessionError::silent(e.to_string()))?;
    let (udp_port, payload, key, layout) =
        match PacedResponse::decode(&body).map_err(|e| SessionError::fatal(e.to_string()))? {
            PacedResponse::NotFound(_) => return Ok(Opening::NotFound),
            PacedResponse::Busy { retry_after_ms } => {
                return Err(SessionError::silent(format!(
                    "the peer is busy (retry after {retry_after_ms} ms)"
                )))
            }
            PacedResponse::Ended(r) => {
                return Err(SessionError::fatal(format!(
                    "the peer ended a session it had not started ({})",
                    r.as_str()
                )))
            }
            PacedResponse::Ready {
                udp_port,
                payload,
                key,
                chunks,
            } => (udp_port, payload, key, chunks),
        };
    let rx = PacedReceiver::new(layout, payload, wanted)
        .map_err(|e| SessionError::fatal(e.to_string()))?;
    socket
        .connect(SocketAddr::new(ip, udp_port))
        .await
        .map_err(|e| SessionError::fatal(format!("UDP connect: {e}")))?;
    Ok(Opening::Ready(Box::new(Opened {
        socket,
        rx,
        seal: ReceiverSeal::new(&key),
        rd,
        wr,
    })))
}

/// A session receiving: its socket, keys and receiver state.
struct Receiving<'a> {
    node: &'a NodeHandle,
    lane: &'a PacedLane,
    socket: UdpSocket,
    seal: ReceiverSeal,
    rx: PacedReceiver,
    out: Vec<u8>,
}

impl Receiving<'_> {
    /// Seals and sends a control message (a lost one is like one lost on the link).
    fn send(&mut self, msg: &ToSender) {
        if self.seal.seal(msg, &mut self.out) {
            let _ = self.socket.try_send(&self.out);
        }
    }

    /// Receives until the session is complete, the sync window closes, the sender ends it, or it
    /// goes quiet.
    async fn receive(
        &mut self,
        mut rd: StreamRead,
        chunks: &mpsc::UnboundedSender<(u32, Vec<u8>)>,
        received: &AtomicU64,
        windows: &SyncWindows,
    ) -> Result<SessionEnd, SessionError> {
        // The sender says on the stream when it stops first (or the stream ends with the
        // connection).
        let ended = async move {
            let forever = FrameIo {
                progress_timeout: Duration::from_secs(u64::from(u32::MAX)),
                limiter: None,
            };
            match forever.read(&mut rd, "paced end", 16, &mut |_| {}).await {
                Ok(b) => match PacedResponse::decode(&b) {
                    Ok(PacedResponse::Ended(r)) => r.as_str().to_owned(),
                    _ => "the peer sent something unexpected on the lane's stream".to_owned(),
                },
                Err(e) => format!("the lane's stream ended: {e}"),
            }
        };
        tokio::pin!(ended);
        self.send(&ToSender::Hello);
        let mut buf = vec![0u8; usize::from(MAX_PAYLOAD) + SEAL_OVERHEAD + 8];
        let mut tick = tokio::time::interval(ACK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clock = Clock::new();
        // Receive errors in a row: ICMP answers to our acks, the peer's port is closed.
        let mut refused = 0u32;
        loop {
            if self.rx.is_complete() {
                return Ok(SessionEnd::Complete);
            }
            tokio::select! {
                why = &mut ended => {
                    return Err(SessionError::silent(format!("the peer ended the session: {why}")));
                }
                r = self.socket.recv(&mut buf) => {
                    // An error here is an ICMP answer to an earlier send. One may be stale; a
                    // run of them means the sender is gone (it restarted, or gave up on us
                    // during an outage): end the session, the fetch asks again.
                    let Ok(n) = r else {
                        refused += 1;
                        if refused >= PORT_CLOSED_AFTER {
                            return Err(SessionError::silent("the peer's UDP port is closed"));
                        }
                        continue;
                    };
                    refused = 0;
                    self.on_datagram(&mut buf[..n], chunks, received, &mut clock)?;
                }
                _ = tick.tick() => {
                    if !windows.is_open(second_of_day()) {
                        return Ok(SessionEnd::WindowClosed);
                    }
                    self.on_tick(&mut clock)?;
                }
            }
        }
    }

    /// One datagram from the sender: a packet (its chunks handed on when complete), a challenge
    /// (answered), or something that does not open (counted, dropped).
    fn on_datagram(
        &mut self,
        datagram: &mut [u8],
        chunks: &mpsc::UnboundedSender<(u32, Vec<u8>)>,
        received: &AtomicU64,
        clock: &mut Clock,
    ) -> Result<(), SessionError> {
        let (seq, bytes) = match self.seal.open(datagram) {
            Ok(FromSender::Data { seq, payload }) => (seq, payload),
            Ok(FromSender::Control(ToReceiver::Challenge { nonce })) => {
                self.send(&ToSender::Response { nonce });
                return Ok(());
            }
            Err(_) => {
                self.node
                    .traffic
                    .paced_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let got = bytes.len() as u64;
        let Ok(arrival) = self.rx.on_data(seq, bytes) else {
            return Ok(());
        };
        received.fetch_add(got, Ordering::Relaxed);
        self.node
            .traffic
            .chunk_bytes_received
            .fetch_add(got, Ordering::Relaxed);
        if !arrival.new {
            return Ok(());
        }
        // Only a packet not here before is progress (a replayed one is not).
        clock.last_data = Some(Instant::now());
        clock.fresh = true;
        for (c, bytes) in arrival.completed {
            if chunks.send((c.chunk, bytes)).is_err() {
                return Err(SessionError::fatal("the fetch stopped"));
            }
        }
        Ok(())
    }

    /// Every 40 ms: Hellos until data comes, acknowledgements, and the silence limits.
    fn on_tick(&mut self, clock: &mut Clock) -> Result<(), SessionError> {
        let now = Instant::now();
        if clock.last_data.is_none() && now - clock.last_hello >= HELLO_EVERY {
            self.send(&ToSender::Hello);
            clock.last_hello = now;
        }
        if clock.fresh || now - clock.last_ack >= ACK_IDLE {
            let ack = self.rx.ack(self.lane.share());
            self.send(&ack);
            clock.last_ack = now;
            clock.fresh = false;
        }
        match clock.last_data {
            None if now - clock.started > FIRST_DATA_LIMIT => Err(SessionError::silent(format!(
                "no datagram arrived within {} s (UDP blocked on the way?)",
                FIRST_DATA_LIMIT.as_secs()
            ))),
            Some(t) if now - t > IDLE_LIMIT => Err(SessionError::silent(format!(
                "no data for {} s",
                IDLE_LIMIT.as_secs()
            ))),
            _ => Ok(()),
        }
    }
}

/// When things last happened in a receiving session.
struct Clock {
    started: Instant,
    last_data: Option<Instant>,
    last_ack: Instant,
    last_hello: Instant,
    /// New data since the last acknowledgement.
    fresh: bool,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock {
            started: now,
            last_data: None,
            last_ack: now,
            last_hello: now,
            fresh: false,
        }
    }
}
