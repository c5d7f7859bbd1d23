//! [`Receiving`]: a lane session's datagrams coming in. It answers challenges, hands each chunk
//! whose bytes are all here to the fetch, acknowledges (every 40 ms while data comes, the first
//! packets one by one so the sender measures its first burst; each ack carries the link's queueing
//! delay and what arrived, see `zdn_protocol::paced::LinkGauge`), and through silence keeps the
//! sender informed cheaply: an ack every 0.5 s for the first 30 s, then a 57-byte probe every 4 s
//! (1.2 MB a day at most), so the first data after an outage comes within a probe interval and a
//! round trip or two. Every 2 s, and at the end, what arrived of chunks not yet complete is written
//! beside the store ([`crate::net::paced::partial`]).
//!
//! It ends when the session is complete, the sync window closes, the sender says it stopped, the
//! sender's port is closed (it restarted), or nothing came for the patience given. A broken
//! libp2p stream does not end it: the connection may have died in an outage that UDP rides out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zdn_protocol::paced::{
    ByteRanges, FromSender, PacedReceiver, PacedResponse, ReceiverSeal, ToReceiver, ToSender,
    DATA_OVERHEAD, MAX_PAYLOAD,
};
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::Hash;

use crate::net::fetch::second_of_day;
use crate::net::frame::FrameIo;
use crate::net::handle::NodeHandle;
use crate::net::paced::lane::PacedLane;
use crate::net::paced::partial::PartialChunks;
use crate::net::paced::session::{LaneChunk, PacedReport, SessionEnd, SessionError, StreamRead};

const ACK_EVERY: Duration = Duration::from_millis(40);
/// While nothing arrives: an ack this often for [`PROBE_AFTER`] (the sender is still sending
/// into a short outage), then a probe every [`PROBE_EVERY`].
const ACK_IDLE: Duration = Duration::from_millis(500);
pub const PROBE_AFTER: Duration = Duration::from_secs(30);
pub const PROBE_EVERY: Duration = Duration::from_secs(4);
/// The first packets are acknowledged one by one (the sender measures its first burst).
const ACK_EACH_FIRST: u32 = 16;
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// A session that brings nothing for this long is given up even with no patience (others may
/// serve; the chunk streams take over).
const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// ... and sooner when not one datagram has come (UDP blocked on the way, say).
const FIRST_DATA_LIMIT: Duration = Duration::from_secs(15);
/// ICMP "port unreachable" answers in a row that end a session.
const PORT_CLOSED_AFTER: u32 = 3;
/// Partly received chunks are written to disk this often.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// The next session is asked for once this much data came, at least (or the setup time, if
/// shorter): before that the rate is not known well enough to say when this one ends.
const TAIL_MEASURE: Duration = Duration::from_secs(1);
/// Added to the setup time: the check runs every [`ACK_EVERY`], and asking takes local work.
const TAIL_MARGIN: Duration = Duration::from_millis(250);

/// When a session is near its end: one setup time (its request to its first data, plus
/// [`TAIL_MARGIN`]) before its last byte, at the rate data comes, `tx` is told the session's chunks. The fetch then asks for
/// the next session (those chunks left out), whose setup runs while this one's last bytes come,
/// so the link does not idle for a setup between sessions of a large object.
pub(crate) struct Tail {
    pub asked_at: Instant,
    pub chunks: Vec<u32>,
    pub tx: tokio::sync::oneshot::Sender<Vec<u32>>,
}

/// One chunk's bytes to write: its id, stored length, and new pieces.
type SaveJob = (Hash, u32, Vec<(u32, Vec<u8>)>);

/// A session receiving: its socket, keys and receiver state.
pub(crate) struct Receiving<'a> {
    node: &'a NodeHandle,
    lane: &'a PacedLane,
    socket: UdpSocket,
    seal: ReceiverSeal,
    rx: PacedReceiver,
    ids: &'a [Hash],
    patience: Duration,
    out: Vec<u8>,
    clock: Clock,
    saver: Option<(mpsc::UnboundedSender<Vec<SaveJob>>, JoinHandle<()>)>,
    /// Chunks whose bytes all came (their partial files go once the writer is done).
    completed: Vec<Hash>,
    detached: u32,
    /// Told when the end is near (see [`Tail`]).
    pub tail: Option<Tail>,
}

/// How the lane's stream ended.
enum StreamEnd {
    /// The sender said it stopped (why).
    Said(String),
    /// It broke (the connection was lost): the session goes on over UDP.
    Broken,
}

impl<'a> Receiving<'a> {
    pub fn new(
        node: &'a NodeHandle,
        lane: &'a PacedLane,
        socket: UdpSocket,
        seal: ReceiverSeal,
        rx: PacedReceiver,
        ids: &'a [Hash],
        patience: Duration,
    ) -> Self {
        let saver = lane.partial.clone().map(spawn_saver);
        Receiving {
            node,
            lane,
            socket,
            seal,
            rx,
            ids,
            patience: patience.max(IDLE_LIMIT),
            out: Vec::with_capacity(usize::from(MAX_PAYLOAD)),
            clock: Clock::new(),
            saver,
            completed: Vec::new(),
            detached: 0,
            tail: None,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.rx.is_complete()
    }

    /// Seals and sends a control message (a lost one is like one lost on the link).
    pub fn send(&mut self, msg: &ToSender) {
        if self.seal.seal(msg, &mut self.out) {
            let _ = self.socket.try_send(&self.out);
        }
    }

    fn ack(&mut self) {
        let ack = self.rx.ack(self.lane.share());
        self.send(&ack);
        self.clock.last_ack = Instant::now();
        self.clock.fresh = false;
    }

    /// Receives until the session is complete, the sync window closes, the sender ends it, or it
    /// goes quiet past the patience.
    pub async fn receive(
        &mut self,
        mut rd: StreamRead,
        chunks: &mpsc::UnboundedSender<LaneChunk>,
        received: &AtomicU64,
        windows: &SyncWindows,
    ) -> Result<SessionEnd, SessionError> {
        // The sender says on the stream when it stops first; the stream breaking with the
        // connection (an outage) does not end the session.
        let ended = async move {
            let forever = FrameIo {
                progress_timeout: Duration::from_secs(u64::from(u32::MAX)),
                limiter: None,
                floor_rate: 0,
            };
            match forever.read(&mut rd, "paced end", 16, &mut |_| {}).await {
                Ok(b) => StreamEnd::Said(match PacedResponse::decode(&b) {
                    Ok(PacedResponse::Ended(r)) => r.as_str().to_owned(),
                    _ => "the peer sent something unexpected on the lane's stream".to_owned(),
                }),
                Err(_) => StreamEnd::Broken,
            }
        };
        let mut ended = Some(Box::pin(ended));
        self.send(&ToSender::Hello);
        let mut buf = vec![0u8; usize::from(MAX_PAYLOAD) + DATA_OVERHEAD + 8];
        let mut tick = tokio::time::interval(ACK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Receive errors in a row: ICMP answers to our acks, the peer's port is closed.
        let mut refused = 0u32;
        loop {
            if self.rx.is_complete() {
                return Ok(SessionEnd::Complete);
            }
            tokio::select! {
                why = async {
                    match ended.as_mut() {
                        Some(e) => e.await,
                        None => std::future::pending().await,
                    }
                }, if ended.is_some() => {
                    ended = None;
                    match why {
                        StreamEnd::Said(why) => {
                            return Err(SessionError::silent(format!("the peer ended the session: {why}")));
                        }
                        StreamEnd::Broken => self.detached += 1,
                    }
                }
                r = self.socket.recv(&mut buf) => {
                    // An error here is an ICMP answer to an earlier send. One may be stale; a
                    // run of them means the sender is gone (it restarted, or gave up on us):
                    // end the session, the fetch asks again.
                    let Ok(n) = r else {
                        refused += 1;
                        if refused >= PORT_CLOSED_AFTER {
                            return Err(SessionError::silent("the peer's UDP port is closed"));
                        }
                        continue;
                    };
                    refused = 0;
                    self.on_datagram(&mut buf[..n], chunks, received)?;
                }
                _ = tick.tick() => {
                    if !windows.is_open(second_of_day()) {
                        return Ok(SessionEnd::WindowClosed);
                    }
                    self.on_tick()?;
                }
            }
        }
    }

    /// One datagram from the sender: a packet (its chunks handed on when complete), a challenge
    /// (answered), or something that does not open (counted, dropped).
    fn on_datagram(
        &mut self,
        datagram: &mut [u8],
        chunks: &mpsc::UnboundedSender<LaneChunk>,
        received: &AtomicU64,
    ) -> Result<(), SessionError> {
        let now = self.clock.started.elapsed();
        let (seq, sent_us, bytes) = match self.seal.open(datagram) {
            Ok(FromSender::Data {
                seq,
                sent_us,
                payload,
            }) => (seq, sent_us, payload),
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
        let Ok(arrival) = self.rx.on_data(now, (seq, sent_us), bytes) else {
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
        let now = Instant::now();
        self.clock.last_data = Some(now);
        self.clock.first_data.get_or_insert(now);
        self.clock.fresh = true;
        if self.rx.stats().received <= ACK_EACH_FIRST {
            self.ack();
        }
        for c in arrival.completed {
            if let Some(id) = self.ids.get(c.chunk.chunk as usize) {
                self.completed.push(*id);
            }
            if chunks
                .send((c.chunk.chunk, c.bytes, c.chunk.resumed))
                .is_err()
            {
                return Err(SessionError::fatal("the fetch stopped"));
            }
        }
        Ok(())
    }

    /// Every 40 ms: Hellos until data comes, acknowledgements, probes through silence, saving
    /// partly received chunks, and the silence limits.
    fn on_tick(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        let c = &self.clock;
        if c.last_data.is_none() && now - c.last_hello >= HELLO_EVERY {
            self.send(&ToSender::Hello);
            self.clock.last_hello = now;
        }
        let c = &self.clock;
        let silent = now - c.last_data.unwrap_or(c.started);
        if c.fresh || (silent < PROBE_AFTER && now - c.last_ack >= ACK_IDLE) {
            self.ack();
        } else if silent >= PROBE_AFTER && now - c.last_probe >= PROBE_EVERY {
            self.send(&ToSender::Probe);
            self.clock.last_probe = now;
        }
        if now - self.clock.last_save >= SAVE_EVERY {
            self.save();
            self.clock.last_save = now;
        }
        self.check_tail(now);
        match self.clock.last_data {
            None if now - self.clock.started > FIRST_DATA_LIMIT => {
                Err(SessionError::silent(format!(
                    "no datagram arrived within {} s (UDP blocked on the way?)",
                    FIRST_DATA_LIMIT.as_secs()
                )))
            }
            Some(t) if now - t > self.patience => Err(SessionError::silent(format!(
                "no data for {} s",
                self.patience.as_secs()
            ))),
            _ => Ok(()),
        }
    }

    /// Tells the fetch the end is near once the bytes still to come would take no longer, at the
    /// rate data has come, than this session's setup took (see [`Tail`]).
    fn check_tail(&mut self, now: Instant) {
        let (Some(tail), Some(first)) = (&self.tail, self.clock.first_data) else {
            return;
        };
        let setup = first.saturating_duration_since(tail.asked_at);
        let receiving = now.saturating_duration_since(first);
        if receiving < setup.min(TAIL_MEASURE) {
            return;
        }
        let s = self.rx.stats();
        if s.packets == 0 || s.received == 0 {
            return;
        }
        let share_left = f64::from(s.packets.saturating_sub(s.received)) / f64::from(s.packets);
        let share_per_sec = f64::from(s.received) / f64::from(s.packets) / receiving.as_secs_f64();
        if share_left <= share_per_sec * (setup + TAIL_MARGIN).as_secs_f64() {
            if let Some(t) = self.tail.take() {
                let _ = t.tx.send(t.chunks);
            }
        }
    }

    /// Hands what arrived of chunks not yet complete to the writer.
    fn save(&mut self) {
        let fresh = self.rx.take_fresh();
        let Some((jobs_tx, _)) = &self.saver else {
            return;
        };
        if fresh.is_empty() {
            return;
        }
        let mut jobs = Vec::new();
        for p in self.rx.partials() {
            let Some(id) = self.ids.get(p.chunk.chunk as usize) else {
                continue;
            };
            // This chunk's new pieces, adjacent ones joined.
            let mut mine = ByteRanges::new();
            for f in fresh.iter().filter(|f| f.k == p.k) {
                mine.insert(f.offset, f.offset + f.len);
            }
            if mine.is_empty() {
                continue;
            }
            let pieces = mine
                .as_slice()
                .iter()
                .map(|&(s, l)| (s, p.bytes[s as usize..(s + l) as usize].to_vec()))
                .collect();
            jobs.push((*id, p.chunk.stored_len, pieces));
        }
        if !jobs.is_empty() {
            let _ = jobs_tx.send(jobs);
        }
    }

    /// The end: what arrived of incomplete chunks is on disk, the counts are in `report`.
    pub async fn finish(mut self, report: &mut PacedReport) {
        self.save();
        if let Some((jobs_tx, writer)) = self.saver.take() {
            drop(jobs_tx);
            let _ = writer.await;
            // A write queued before a chunk completed may have come after the fetch removed its
            // files: the chunks that completed leave nothing behind.
            if let (Some(p), false) = (self.lane.partial.clone(), self.completed.is_empty()) {
                let done = std::mem::take(&mut self.completed);
                let _ = tokio::task::spawn_blocking(move || {
                    for id in &done {
                        p.remove(id);
                    }
                })
                .await;
            }
        }
        let s = self.rx.stats();
        report.datagrams += u64::from(s.received) + s.duplicates;
        report.duplicates += s.duplicates;
        report.payload_bytes += s.payload_bytes;
        report.detached += self.detached;
    }
}

/// The task that writes partly received chunks, in order, off the async threads.
fn spawn_saver(partial: PartialChunks) -> (mpsc::UnboundedSender<Vec<SaveJob>>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<SaveJob>>();
    let task = tokio::spawn(async move {
        while let Some(jobs) = rx.recv().await {
            let p = partial.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (id, len, pieces) in jobs {
                    // A failed write only costs those bytes again later.
                    let _ = p.save(&id, len, &pieces);
                }
            })
            .await;
        }
    });
    (tx, task)
}

/// When things last happened in a receiving session.
struct Clock {
    started: Instant,
    first_data: Option<Instant>,
    last_data: Option<Instant>,
    last_ack: Instant,
    last_hello: Instant,
    last_probe: Instant,
    last_save: Instant,
    /// New data since the last acknowledgement.
    fresh: bool,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock {
            started: now,
            first_data: None,
            last_data: None,
            last_ack: now,
            last_hello: now,
            last_probe: now,
            last_save: now,
            fresh: false,
        }
    }
}
