//! Serving the paced lane (`/zdn/paced/1`, `zdn_protocol::paced`): a peer asks for chunks of an
//! object at a rate; this node answers with its UDP port and the session's layout, then sends the
//! chunks as paced datagrams until the peer has them all, says it is done, or goes silent.
//!
//! Limits: at most [`MAX_SESSIONS`] sessions at once (more get `Busy`), each at most 64 MiB held
//! in memory, its rate capped by the node's upload cap; a session whose receiver sends no control
//! datagram for [`SILENCE`] ends (it sends into an outage until then, so the link is full the
//! moment the outage ends). The first datagrams go to the address the libp2p connection comes
//! from; a Hello or Ack from another address (the receiver is behind NAT) moves the session there.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use zdn_protocol::paced::{
    encode_data, Control, PacedRequest, PacedResponse, PacedSender, SenderPoll, SessionChunk,
    MAX_CONTROL_LEN, MAX_PACED_REQUEST, MAX_SESSION_BYTES, MAX_SESSION_CHUNKS,
};

use crate::store::StoreHandle;

use super::config::Fault;
use super::fetch_chunks::distinct_chunks;
use super::frame::FrameIo;
use super::handle::{Command, PeerInfo, Traffic};

/// Sessions served at once, all peers together.
pub const MAX_SESSIONS: usize = 8;
/// A session whose receiver is silent this long ends.
pub const SILENCE: Duration = Duration::from_secs(90);
/// ... and sooner when it has never been heard from (its datagrams cannot reach us).
const FIRST_CONTACT: Duration = Duration::from_secs(20);

pub(crate) struct PacedServer {
    /// To ask the event loop where a peer is; weak, so the server does not keep the node alive.
    pub commands: mpsc::WeakSender<Command>,
    pub store: StoreHandle,
    pub progress_timeout: Duration,
    /// The node's upload cap, bits per second.
    pub max_rate_bps: Option<u64>,
    pub traffic: Arc<Traffic>,
    pub fault: Option<Fault>,
}

impl PacedServer {
    pub async fn run(
        self,
        mut incoming: libp2p_stream::IncomingStreams,
        mut stop: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let active = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                next = incoming.next() => {
                    let Some((peer, stream)) = next else { break };
                    let (this, active, stop) = (this.clone(), active.clone(), stop.clone());
                    tasks.spawn(async move {
                        // A session that fails ends; the receiver's side says why it stopped.
                        let _ = this.serve(peer, stream, active, stop).await;
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
    }

    async fn serve(
        &self,
        peer: PeerId,
        stream: Stream,
        active: Arc<AtomicUsize>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (mut rd, mut wr) = stream.split();
        let io = FrameIo {
            progress_timeout: self.progress_timeout,
            limiter: None,
        };
        let body = io
            .read(&mut rd, "paced request", MAX_PACED_REQUEST, &mut |_| {})
            .await
            .map_err(|e| e.to_string())?;
        let req = PacedRequest::decode(&body).map_err(|e| e.to_string())?;
        let reply = |r: PacedResponse| r.encode();
        // One slot per session; given back when this function returns.
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = reply(PacedResponse::Busy {
                retry_after_ms: 5_000,
            });
            return io
                .write(&mut wr, "paced response", &busy)
                .await
                .map_err(|e| e.to_string());
        }
        let _slot = Slot(active);

        let object = req.object;
        let wanted = req.wanted.clone();
        let corrupt = self.fault == Some(Fault::CorruptChunks);
        let loaded = self
            .store
            .call(
                move |s| -> Result<Option<Session>, crate::store::StoreError> {
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
            .map_err(|e| e.to_string())?;
        let Some((layout, bytes)) = loaded else {
            let nf = reply(PacedResponse::NotFound(object));
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
        let payload = req.payload;
        let ready = reply(PacedResponse::Ready {
            udp_port: port,
            payload,
            chunks: layout,
        });
        io.write(&mut wr, "paced response", &ready)
            .await
            .map_err(|e| e.to_string())?;

        let overhead = match ip {
            IpAddr::V4(_) => 28,
            IpAddr::V6(_) => 48,
        };
        let rtt = rtt.unwrap_or(Duration::from_secs(1));
        let cap = |r: u64| self.max_rate_bps.map_or(r, |m| r.min(m));
        let mut tx = PacedSender::new(
            bytes.len() as u64,
            payload,
            cap(req.rate_bps),
            overhead,
            rtt,
        );
        let mut target = SocketAddr::new(ip, req.udp_port);
        let t0 = Instant::now();
        let mut last_heard: Option<Instant> = None;
        let mut out = Vec::with_capacity(usize::from(payload) + 4);
        let mut inbox = vec![0u8; MAX_CONTROL_LEN + 1];
        loop {
            let now = t0.elapsed();
            let wake = match tx.poll(now) {
                SenderPoll::Done => break,
                SenderPoll::Send(seq) => {
                    let (off, len) = tx.span(seq);
                    let off = off as usize;
                    encode_data(seq, &bytes[off..off + len], &mut out);
                    // A send error (no route during an outage) is a lost datagram, as on the link.
                    if socket.send_to(&out, target).await.is_ok() {
                        self.traffic
                            .chunk_bytes_served
                            .fetch_add(len as u64, Ordering::Relaxed);
                    }
                    continue;
                }
                SenderPoll::Wait(at) => t0 + at,
            };
            match last_heard {
                None if t0.elapsed() > FIRST_CONTACT => {
                    return Err(format!(
                        "receiver not heard from in {} s",
                        FIRST_CONTACT.as_secs()
                    ));
                }
                Some(t) if t.elapsed() > SILENCE => {
                    return Err(format!("receiver silent for {} s", SILENCE.as_secs()));
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => return Ok(()),
                r = socket.recv_from(&mut inbox) => {
                    let Ok((n, from)) = r else { continue };
                    let Ok(c) = Control::decode(&inbox[..n]) else { continue };
                    if c.token() != req.token {
                        continue;
                    }
                    last_heard = Some(Instant::now());
                    if from != target {
                        target = from;
                    }
                    match c {
                        Control::Hello { .. } => {}
                        Control::Ack { rate_bps, cumulative, ranges, .. } => {
                            tx.on_ack(t0.elapsed(), cap(rate_bps), cumulative, &ranges);
                        }
                        Control::Done { .. } => break,
                    }
                }
            }
        }
        Ok(())
    }
}

/// A session's layout and its bytes, in that order.
type Session = (Vec<SessionChunk>, Vec<u8>);

/// Gives a session slot back.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

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
