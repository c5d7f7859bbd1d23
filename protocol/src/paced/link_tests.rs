//! The sender and the receiver together over a simulated link (rate, queue, delay, loss, outages):
//! the lane's claims checked without sockets, in simulated time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::wire::ChunkBitmap;

use super::*;

const KEY: [u8; 32] = [42; 32];
const OVERHEAD: u32 = 28;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction: drop-tail queue, serialisation at `rate`, loss after using link time, delay.
struct Dir {
    rate: u64,
    delay: Duration,
    loss: f64,
    queue: u64,
    busy_until: Duration,
    outages: Vec<(Duration, Duration)>,
}

impl Dir {
    fn down(&self, t: Duration) -> bool {
        self.outages.iter().any(|&(a, b)| t >= a && t < b)
    }
    /// When the packet arrives, or `None` when it is lost.
    fn send(&mut self, t: Duration, wire: u64, rng: &mut Rng) -> Option<Duration> {
        if self.down(t) {
            return None;
        }
        let start = self.busy_until.max(t);
        let backlog = (start - t).as_nanos() as u64 * self.rate / 8 / 1_000_000_000;
        if backlog + wire > self.queue {
            return None;
        }
        self.busy_until = start + Duration::from_nanos(wire * 8 * 1_000_000_000 / self.rate);
        if rng.next() < self.loss {
            return None;
        }
        Some(self.busy_until + self.delay)
    }
    fn up_time(&self, until: Duration) -> Duration {
        let down: Duration = self
            .outages
            .iter()
            .map(|&(a, b)| b.min(until).saturating_sub(a))
            .sum();
        until - down
    }
}

enum Ev {
    Wake,
    Data(Vec<u8>),
    Ctl(Vec<u8>),
    AckTimer,
}

struct Outcome {
    done_at: Duration,
    goodput: f64,
    stats: SenderStats,
    rx: ReceiverStats,
}

fn chunks_of(sizes: &[u32]) -> (Vec<SessionChunk>, Vec<Vec<u8>>, ChunkBitmap) {
    let mut rng = Rng(99);
    let mut out = Vec::new();
    let mut data = Vec::new();
    let mut wanted = ChunkBitmap::new(sizes.len() as u32 * 2);
    for (i, &s) in sizes.iter().enumerate() {
        let chunk = i as u32 * 2;
        wanted.set(chunk);
        out.push(SessionChunk {
            chunk,
            stored_len: s,
        });
        data.push((0..s).map(|_| (rng.next() * 256.0) as u8).collect());
    }
    (out, data, wanted)
}

/// Runs a session of `sizes` over `fwd` (data) and `back` (acks), asking for `ask_bps`.
fn run(sizes: &[u32], mut fwd: Dir, mut back: Dir, ask_bps: u64, seed: u64) -> Outcome {
    let (chunks, data, wanted) = chunks_of(sizes);
    let stream: Vec<u8> = data.concat();
    let payload = 1448u16;
    let mut rx = PacedReceiver::new(chunks.clone(), payload, &wanted).unwrap();
    let mut tx = PacedSender::new(
        rx.total_bytes(),
        payload,
        ask_bps,
        OVERHEAD,
        fwd.delay + back.delay,
    );
    let (tx_seal, mut tx_open) = (SenderSeal::new(&KEY), SenderSeal::new(&KEY));
    let mut rx_seal = ReceiverSeal::new(&KEY);
    let mut rng = Rng(seed);
    let mut heap: BinaryHeap<Reverse<(Duration, u64, usize)>> = BinaryHeap::new();
    let mut evs: Vec<Option<Ev>> = Vec::new();
    let push = |heap: &mut BinaryHeap<_>, evs: &mut Vec<Option<Ev>>, t, e| {
        evs.push(Some(e));
        heap.push(Reverse((t, evs.len() as u64, evs.len() - 1)));
    };
    push(&mut heap, &mut evs, Duration::ZERO, Ev::Wake);
    push(&mut heap, &mut evs, Duration::from_millis(40), Ev::AckTimer);
    let mut got: Vec<Option<Vec<u8>>> = vec![None; chunks.len()];
    let mut buf = Vec::new();
    let mut wake_pending = true;
    let mut done_at = None;
    while let Some(Reverse((t, _, i))) = heap.pop() {
        assert!(t < Duration::from_secs(3600), "the session did not end");
        match evs[i].take().unwrap() {
            Ev::Wake => {
                wake_pending = false;
                loop {
                    match tx.poll(t) {
                        SenderPoll::Send(seq) => {
                            let (off, len) = tx.span(seq);
                            tx_seal.seal_data(
                                seq,
                                &stream[off as usize..off as usize + len],
                                &mut buf,
                            );
                            let wire = buf.len() as u64 + u64::from(OVERHEAD);
                            if let Some(at) = fwd.send(t, wire, &mut rng) {
                                push(&mut heap, &mut evs, at, Ev::Data(buf.clone()));
                            }
                        }
                        SenderPoll::Wait(at) => {
                            push(&mut heap, &mut evs, at, Ev::Wake);
                            wake_pending = true;
                            break;
                        }
                        SenderPoll::Done => break,
                    }
                }
            }
            Ev::Data(mut d) => {
                let Ok(FromSender::Data { seq, payload }) = rx_seal.open(&mut d) else {
                    panic!("a data datagram did not open")
                };
                for (c, bytes) in rx.on_data(seq, payload).unwrap().completed {
                    let k = chunks.iter().position(|x| *x == c).unwrap();
                    assert!(got[k].is_none(), "chunk handed out twice");
                    got[k] = Some(bytes);
                }
                if rx.is_complete() && done_at.is_none() {
                    done_at = Some(t);
                    let mut done = Vec::new();
                    assert!(rx_seal.seal(&ToSender::Done, &mut done));
                    if let Some(at) = back.send(t, done.len() as u64 + 28, &mut rng) {
                        push(&mut heap, &mut evs, at, Ev::Ctl(done));
                    }
                }
            }
            Ev::Ctl(mut c) => {
                match tx_open.open(&mut c).unwrap() {
                    ToSender::Ack {
                        rate_bps,
                        cumulative,
                        ranges,
                    } => tx.on_ack(t, rate_bps, cumulative, &ranges),
                    ToSender::Done => break,
                    ToSender::Hello | ToSender::Response { .. } => {}
                }
                if !wake_pending {
                    push(&mut heap, &mut evs, t, Ev::Wake);
                    wake_pending = true;
                }
            }
            Ev::AckTimer => {
                if done_at.is_none() {
                    let mut a = Vec::new();
                    assert!(rx_seal.seal(&rx.ack(ask_bps), &mut a));
                    if let Some(at) = back.send(t, a.len() as u64 + 28, &mut rng) {
                        push(&mut heap, &mut evs, at, Ev::Ctl(a));
                    }
                    push(
                        &mut heap,
                        &mut evs,
                        t + Duration::from_millis(40),
                        Ev::AckTimer,
                    );
                }
            }
        }
    }
    for (k, d) in data.iter().enumerate() {
        assert_eq!(
            got[k].as_deref(),
            Some(&d[..]),
            "chunk {k} came back different"
        );
    }
    let done_at = done_at.expect("complete");
    let capacity = fwd.rate as f64 / 8.0 * fwd.up_time(done_at).as_secs_f64();
    Outcome {
        done_at,
        goodput: stream.len() as f64 / capacity,
        stats: tx.stats(),
        rx: rx.stats(),
    }
}

fn sat(loss: f64, outages: &[(u64, u64)]) -> (Dir, Dir) {
    let o: Vec<_> = outages
        .iter()
        .map(|&(a, b)| (Duration::from_secs(a), Duration::from_secs(b)))
        .collect();
    let d = |o: Vec<_>| Dir {
        rate: 1_000_000,
        delay: Duration::from_millis(300),
        loss,
        queue: 125_000,
        busy_until: Duration::ZERO,
        outages: o,
    };
    (d(o.clone()), d(o))
}

#[test]
fn fills_a_lossy_satellite_link_through_outages() {
    // 8 MiB over 1 Mbit/s, 600 ms, 1 % loss, two 15 s outages: about 70 s of link time.
    let sizes = vec![1 << 20; 8];
    let (f, b) = sat(0.01, &[(10, 25), (50, 65)]);
    let o = run(&sizes, f, b, 1_000_000, 7);
    // Headers (IP, UDP, number, tag) cap it at 1448/1496 = 0.968 and 1 % loss costs 1 %: 0.958.
    eprintln!("goodput {:.4}, {:?}, {:?}", o.goodput, o.stats, o.rx);
    assert!(
        o.goodput >= 0.95,
        "goodput {:.4} ({:?})",
        o.goodput,
        o.stats
    );
    assert!(
        o.goodput <= 0.98,
        "goodput {:.4} is above what headers allow",
        o.goodput
    );
    // Duplicates (a retransmission of what had arrived) stay rare.
    assert!(o.rx.duplicates < 200, "{:?}", o.rx);
    assert!(o.done_at > Duration::from_secs(65));
}

#[test]
fn clean_link_sends_each_packet_once() {
    let sizes = vec![300_000, 7, 1464, 1465, 200_000];
    let (f, b) = sat(0.0, &[]);
    let o = run(&sizes, f, b, 1_000_000, 1);
    assert_eq!(o.stats.retransmitted, 0, "{:?}", o.stats);
    assert_eq!(o.rx.duplicates, 0);
    // Done when the last packet's bits are through the link and have crossed it (300 ms): the
    // link was never idle.
    let bytes: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    let wire = bytes + u64::from(o.stats.packets) * (SEAL_OVERHEAD as u64 + u64::from(OVERHEAD));
    let floor = Duration::from_secs_f64(wire as f64 * 8.0 / 1e6) + Duration::from_millis(300);
    assert!(o.done_at >= floor, "{:?} < {floor:?}", o.done_at);
    assert!(
        o.done_at <= floor + Duration::from_millis(20),
        "{:?} vs {floor:?}",
        o.done_at
    );
}

#[test]
fn a_rate_above_the_link_is_brought_down() {
    // The receiver asks for 2 Mbit/s on a 1 Mbit/s link: half would be dropped at the queue
    // forever without the safety limit.
    let sizes = vec![1 << 20; 4];
    let (f, b) = sat(0.0, &[]);
    let o = run(&sizes, f, b, 2_000_000, 3);
    assert!(o.stats.rate_bps < 1_400_000, "{:?}", o.stats);
    let waste = o.stats.sent as f64 / f64::from(o.stats.packets);
    assert!(waste < 1.6, "sent {waste:.2} datagrams per packet");
}

#[test]
fn receiver_refuses_datagrams_that_do_not_fit() {
    let (chunks, _, wanted) = chunks_of(&[3000, 10]);
    let mut rx = PacedReceiver::new(chunks, 1464, &wanted).unwrap();
    // Packet 2 is the last: 3010 - 2928 = 82 bytes, not 83.
    assert!(rx.on_data(2, &[0; 83]).is_err());
    assert!(rx.on_data(3, &[0; 10]).is_err());
    assert!(rx.on_data(u32::MAX, &[0; 10]).is_err());
    // Completes the 10-byte chunk (it lies wholly in packet 2), not the first.
    let a = rx.on_data(2, &[0; 82]).unwrap();
    assert!(a.new);
    assert_eq!(a.completed.len(), 1);
    assert_eq!(a.completed[0].0.stored_len, 10);
    assert_eq!(rx.stats().rejected, 3);
    // The same packet again is a duplicate: not new, completes nothing.
    assert_eq!(rx.on_data(2, &[0; 82]).unwrap(), Arrival::default());
    assert_eq!(rx.stats().duplicates, 1);
    assert!(!rx.is_complete());
}

#[test]
fn receiver_refuses_a_layout_it_did_not_ask_for() {
    let (mut chunks, _, wanted) = chunks_of(&[3000, 10]);
    chunks[1].chunk = 1;
    assert!(PacedReceiver::new(chunks, 1464, &wanted).is_err());
    assert!(PacedReceiver::new(Vec::new(), 1464, &wanted).is_err());
}
