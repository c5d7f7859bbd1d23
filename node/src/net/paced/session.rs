//! The receiving side of the paced lane (`zdn_protocol::paced`): used by [`crate::net::fetch()`]
//! when the lane is on (a field station, or `--link-rate`). It asks one peer for the missing
//! chunks — saying which byte ranges of partly received chunks it already holds — and hands each
//! chunk whose bytes are all here to the fetch, which verifies it before storing it; the datagrams
//! themselves are received in `receiving.rs`. What the lane does not bring (a peer without it, a
//! session that goes silent past the patience, a chunk that fails verification) is left to the
//! chunk streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zdn_protocol::paced::{
    to_send, HeldChunk, PacedReceiver, PacedRequest, PacedResponse, ReceiverSeal, ToSender,
    MAX_PACED_RESPONSE, PACED_PROTOCOL,
};
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::wire::ChunkBitmap;
use zdn_protocol::Hash;

use crate::net::frame::FrameIo;
use crate::net::handle::NodeHandle;
use crate::net::paced::lane::{Active, PacedLane};
use crate::net::paced::receiving::{Receiving, Tail};
use crate::net::paced::server::peer_path;
use crate::net::streams::OpenStreamError;

pub(crate) const PACED_STREAM: StreamProtocol = StreamProtocol::new(PACED_PROTOCOL);

/// Payload per datagram: a 1500-byte IPv4 packet less 20 (IP), 8 (UDP), 8 (packet number and
/// send time) and 16 (authentication tag), and 4 bytes of slack.
const PAYLOAD_V4: u16 = 1444;
/// The same for IPv6 (40-byte header).
const PAYLOAD_V6: u16 = 1424;

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
    /// Stored bytes of partly received chunks that were not asked for again (held from an
    /// earlier session, on disk).
    #[serde(default)]
    pub held_bytes: u64,
    /// Chunks whose held bytes failed verification once complete (dropped, asked for whole).
    #[serde(default)]
    pub held_rejected: u32,
    /// Times the lane's libp2p stream broke while the session went on over UDP (an outage long
    /// enough to lose the connection).
    #[serde(default)]
    pub detached: u32,
    /// Sessions asked for while the one before was still ending (its setup hidden behind that
    /// one's last bytes).
    #[serde(default)]
    pub overlapped: u32,
}

/// A chunk whose bytes are all here, for the fetch to verify: its index among the object's
/// distinct chunks, its stored bytes, and whether some of them were held from an earlier session.
pub(crate) type LaneChunk = (u32, Vec<u8>, bool);

/// What one session asks.
pub(crate) struct Ask<'a> {
    pub peer: PeerId,
    pub object: Hash,
    pub wanted: ChunkBitmap,
    /// Byte ranges of wanted chunks held from before.
    pub held: Vec<HeldChunk>,
    /// The object's distinct chunk ids (where partly received chunks are kept).
    pub ids: &'a [Hash],
    /// How long a silent sender is waited for (it is probed meanwhile).
    pub patience: Duration,
    /// Told the session's chunks when its end is near (see [`Tail`]), so the next session can be
    /// asked for while this one finishes.
    pub tail: Option<oneshot::Sender<Vec<u32>>>,
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

/// One session: asks for `ask.wanted`; each chunk whose bytes are all here goes to `chunks`. Ends
/// when the session is complete; an error says why it stopped early.
pub(crate) async fn session(
    node: &NodeHandle,
    lane: Arc<PacedLane>,
    mut ask: Ask<'_>,
    (chunks, received): (&mpsc::UnboundedSender<LaneChunk>, &AtomicU64),
    windows: &SyncWindows,
    report: &mut PacedReport,
) -> Result<SessionEnd, SessionError> {
    let _active = Active::new(&lane);
    let asked_at = Instant::now();
    let opened = match open(node, &lane, &ask).await? {
        Opening::Ready(o) => o,
        Opening::NotFound => return Ok(SessionEnd::NotFound),
    };
    report.sessions += 1;
    let Opened {
        socket,
        mut rx,
        seal,
        rd,
        mut wr,
    } = *opened;
    report.held_bytes += load_held(&lane, &mut rx, ask.ids, &ask.held).await;
    let tail = ask.tail.take().map(|tx| Tail {
        asked_at,
        chunks: rx.chunks().iter().map(|c| c.chunk).collect(),
        tx,
    });
    let mut run = Receiving::new(node, &lane, socket, seal, rx, ask.ids, ask.patience);
    run.tail = tail;
    let result = run.receive(rd, chunks, received, windows).await;
    if run.is_complete() || matches!(result, Ok(SessionEnd::WindowClosed)) {
        // Done also stops a sender outside the sync window. Said three times; closing the stream
        // (below) ends the session at the sender in any case.
        for _ in 0..3 {
            run.send(&ToSender::Done);
        }
    }
    let _ = futures::AsyncWriteExt::close(&mut wr).await;
    run.finish(report).await;
    result
}

/// Loads from disk the held bytes of the chunks the sender resumed; returns how many stored bytes
/// the sender skips thanks to them.
async fn load_held(
    lane: &PacedLane,
    rx: &mut PacedReceiver,
    ids: &[Hash],
    held: &[HeldChunk],
) -> u64 {
    let Some(partial) = lane.partial.clone() else {
        return 0;
    };
    let mut skipped = 0;
    let resumed: Vec<(usize, Hash, u32, u64)> = rx
        .chunks()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.resumed)
        .filter_map(|(k, c)| {
            let sent = to_send(c, held).ok()?.bytes();
            let id = *ids.get(c.chunk as usize)?;
            Some((k, id, c.stored_len, u64::from(c.stored_len) - sent))
        })
        .collect();
    for (k, id, len, held_bytes) in resumed {
        let p = partial.clone();
        let bytes = tokio::task::spawn_blocking(move || p.load(&id, len))
            .await
            .ok()
            .flatten();
        if let Some(b) = bytes {
            skipped += held_bytes;
            rx.load_held(k, b);
        }
    }
    skipped
}

pub(crate) type StreamRead = futures::io::ReadHalf<libp2p::Stream>;
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

/// Asks `ask.peer` on a new lane stream for the wanted chunks and checks its answer.
async fn open(node: &NodeHandle, lane: &PacedLane, ask: &Ask<'_>) -> Result<Opening, SessionError> {
    let peer = ask.peer;
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
        object: ask.object,
        rate_bps: lane.share(),
        payload,
        udp_port: socket.local_addr().map_or(0, |a| a.port()),
        wanted: ask.wanted.clone(),
        held: ask.held.clone(),
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
    let io = FrameIo::new(node.tuning.progress_timeout);
    io.write(&mut wr, "paced request", &req.encode())
        .await
        .map_err(|e| SessionError::silent(e.to_string()))?;
    let body = io
        .read(&mut rd, "paced response", MAX_PACED_RESPONSE, &mut |_| {})
        .await
        .map_err(|e| {
            if e.unsupported_protocol() {
                SessionError::fatal(format!("the peer does not offer the paced lane: {e}"))
            } else {
                SessionError::silent(e.to_string())
            }
        })?;
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
    let rx = PacedReceiver::new(layout, payload, &ask.wanted, &ask.held)
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
