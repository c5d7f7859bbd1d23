use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use proptest::prelude::*;

use super::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// A simulated peer: serves one response at a time (as the node does), `rate` bytes/s, a one-way
/// `latency`, optionally corrupt (every chunk it serves is bad) or stalled (never answers).
#[derive(Debug, Clone)]
struct SimPeer {
    rate: f64,
    latency: Duration,
    holds: Option<Vec<bool>>,
    corrupt: bool,
    stalled: bool,
}

#[derive(Debug, Default)]
struct SimReport {
    finished_at: Duration,
    accepted: Vec<u32>,
    delivered_bytes: u64,
    per_peer_chunks: BTreeMap<usize, u64>,
    max_duplicates_in_flight: usize,
    requested_done: bool,
}

/// Discrete-event run of one transfer. The client gives up on a request after `timeout` without an
/// answer (the node's progress timeout) and reports `Failure::Io`.
fn simulate(
    sizes: &[u32],
    peers: &[SimPeer],
    done: &[u32],
    config: SchedulerConfig,
    timeout: Duration,
) -> SimReport {
    let mut s: SyncScheduler<usize> = SyncScheduler::new(sizes.to_vec(), config);
    for &d in done {
        s.mark_done(d);
    }
    for (i, p) in peers.iter().enumerate() {
        let h = match &p.holds {
            None => Holdings::All,
            Some(v) => {
                let mut b = ChunkBitmap::new(sizes.len() as u32);
                for (c, &has) in v.iter().enumerate() {
                    if has {
                        b.set(c as u32);
                    }
                }
                Holdings::Some(b)
            }
        };
        assert!(s.add_peer(i, h));
    }
    // (time, seq, peer, chunk, is_timeout)
    // (time, sequence, peer, chunk, is-an-arrival)
    type Event = Reverse<(Duration, u64, usize, u32, bool)>;
    let mut events: BinaryHeap<Event> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut server_free = vec![Duration::ZERO; peers.len()];
    let mut outstanding: BTreeMap<(usize, u32), u64> = BTreeMap::new();
    let mut report = SimReport::default();
    let mut now = Duration::ZERO;
    let done_set: std::collections::BTreeSet<u32> = done.iter().copied().collect();
    for _step in 0..200_000 {
        for a in s.next_requests(now) {
            if done_set.contains(&a.chunk) {
                report.requested_done = true;
            }
            let p = &peers[a.peer];
            seq += 1;
            outstanding.insert((a.peer, a.chunk), seq);
            if !p.stalled {
                let arrive = now + p.latency;
                let start = arrive.max(server_free[a.peer]);
                let service = Duration::from_secs_f64(f64::from(sizes[a.chunk as usize]) / p.rate);
                server_free[a.peer] = start + service;
                events.push(Reverse((
                    start + service + p.latency,
                    seq,
                    a.peer,
                    a.chunk,
                    false,
                )));
            }
            events.push(Reverse((now + timeout, seq, a.peer, a.chunk, true)));
        }
        report.max_duplicates_in_flight = report
            .max_duplicates_in_flight
            .max(max_duplicates_per_peer(&s));
        if s.is_complete() {
            report.finished_at = now;
            return report;
        }
        let Some(Reverse((t, id, peer, chunk, is_timeout))) = events.pop() else {
            match s.next_wakeup(now) {
                Some(t) => {
                    now = t;
                    continue;
                }
                None => break,
            }
        };
        // Events of cancelled or answered requests are stale.
        if outstanding.get(&(peer, chunk)) != Some(&id) {
            continue;
        }
        outstanding.remove(&(peer, chunk));
        now = t;
        if is_timeout {
            s.on_failed(&peer, chunk, Failure::Io, now);
            continue;
        }
        report.delivered_bytes += u64::from(sizes[chunk as usize]);
        if peers[peer].corrupt {
            s.on_corrupt(&peer, chunk);
            outstanding.retain(|&(p, _), _| p != peer);
            continue;
        }
        match s.on_received(&peer, chunk, now) {
            Received::New { cancel } => {
                report.accepted.push(chunk);
                *report.per_peer_chunks.entry(peer).or_default() += 1;
                for c in cancel {
                    outstanding.remove(&(c, chunk));
                }
            }
            Received::AlreadyDone => {}
        }
    }
    report.finished_at = now;
    report
}

fn max_duplicates_per_peer(s: &SyncScheduler<usize>) -> usize {
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for hs in s.holders.values() {
        for p in hs.iter().skip(1) {
            *per.entry(*p).or_default() += 1;
        }
    }
    per.values().copied().max().unwrap_or(0)
}

fn seeder(rate: f64, latency_ms: u64) -> SimPeer {
    SimPeer {
        rate,
        latency: ms(latency_ms),
        holds: None,
        corrupt: false,
        stalled: false,
    }
}

#[test]
fn one_satellite_peer_keeps_the_link_full() {
    // 1 Mbps, 600 ms RTT, 4 MiB in 256 KiB chunks.
    let sizes = vec![256 << 10; 16];
    let rate = 125_000.0;
    let r = simulate(
        &sizes,
        &[seeder(rate, 300)],
        &[],
        SchedulerConfig::default(),
        Duration::from_secs(600),
    );
    let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    let ideal = total as f64 / rate + 0.6;
    let took = r.finished_at.as_secs_f64();
    assert_eq!(r.accepted.len(), 16);
    assert!(took <= ideal * 1.02, "took {took:.2}s, ideal {ideal:.2}s");
}

#[test]
fn small_chunks_on_a_long_link_get_a_deep_window() {
    // 16 KiB chunks at 1 Mbps × 1.6 s RTT: one chunk in flight would give ~8 % of the link.
    let sizes = vec![16 << 10; 200];
    let rate = 125_000.0;
    let r = simulate(
        &sizes,
        &[seeder(rate, 800)],
        &[],
        SchedulerConfig::default(),
        Duration::from_secs(600),
    );
    let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    let ideal = total as f64 / rate + 1.6;
    let took = r.finished_at.as_secs_f64();
    assert!(took <= ideal * 1.25, "took {took:.2}s, ideal {ideal:.2}s");
}

#[test]
fn faster_peer_does_more_work() {
    let sizes = vec![1 << 20; 100];
    let r = simulate(
        &sizes,
        &[seeder(100e6, 1), seeder(25e6, 1)],
        &[],
        SchedulerConfig::default(),
        Duration::from_secs(60),
    );
    let fast = r.per_peer_chunks.get(&0).copied().unwrap_or(0);
    let slow = r.per_peer_chunks.get(&1).copied().unwrap_or(0);
    assert_eq!(fast + slow, 100);
    assert!(fast >= 3 * slow, "fast {fast}, slow {slow}");
}

#[test]
fn resume_never_requests_done_chunks() {
    let sizes = vec![1000; 50];
    let done: Vec<u32> = (0..50).filter(|c| c % 3 == 0).collect();
    let r = simulate(
        &sizes,
        &[seeder(1e6, 10), seeder(1e6, 20)],
        &done,
        SchedulerConfig::default(),
        Duration::from_secs(60),
    );
    assert!(!r.requested_done);
    assert_eq!(r.accepted.len(), 50 - done.len());
}

#[test]
fn corrupt_peer_is_banned_and_its_chunks_come_from_another() {
    let sizes = vec![4096; 40];
    let mut bad = seeder(10e6, 5);
    bad.corrupt = true;
    let r = simulate(
        &sizes,
        &[bad, seeder(1e6, 5)],
        &[],
        SchedulerConfig::default(),
        Duration::from_secs(60),
    );
    assert_eq!(r.accepted.len(), 40);
    assert!(!r.per_peer_chunks.contains_key(&0));
}

#[test]
fn stalled_peer_is_worked_around() {
    let sizes = vec![64 << 10; 30];
    let mut stall = seeder(10e6, 5);
    stall.stalled = true;
    let r = simulate(
        &sizes,
        &[stall, seeder(2e6, 5)],
        &[],
        SchedulerConfig::default(),
        Duration::from_secs(30),
    );
    assert_eq!(r.accepted.len(), 30);
    // Without the end game and back-off the stalled peer's share would wait for timeouts repeatedly.
    assert!(
        r.finished_at < Duration::from_secs(120),
        "{:?}",
        r.finished_at
    );
}

#[test]
fn rarest_chunk_is_asked_first() {
    let mut s: SyncScheduler<u8> = SyncScheduler::new(vec![10; 4], SchedulerConfig::default());
    let mut only_b = ChunkBitmap::new(4);
    only_b.set(2);
    only_b.set(3);
    s.add_peer(0, Holdings::All);
    s.add_peer(1, Holdings::Some(only_b));
    // Chunks 0 and 1 are held by one peer, 2 and 3 by two: peer 0 starts with the rare ones.
    let first: Vec<_> = s
        .next_requests(ms(0))
        .into_iter()
        .filter(|a| a.peer == 0)
        .map(|a| a.chunk)
        .collect();
    assert_eq!(&first[..2], &[0, 1]);
}

#[test]
fn banned_peer_cannot_come_back() {
    let mut s: SyncScheduler<u8> = SyncScheduler::new(vec![10; 2], SchedulerConfig::default());
    s.add_peer(7, Holdings::All);
    s.on_corrupt(&7, 0);
    assert!(s.is_banned(&7));
    assert!(!s.add_peer(7, Holdings::All));
    assert!(s.next_requests(ms(1)).is_empty());
    assert!(s.has_unavailable());
}

#[test]
fn not_found_is_not_asked_again_from_that_peer() {
    let mut s: SyncScheduler<u8> = SyncScheduler::new(vec![10; 1], SchedulerConfig::default());
    s.add_peer(1, Holdings::All);
    let a = s.next_requests(ms(0));
    assert_eq!(a.len(), 1);
    s.on_failed(&1, 0, Failure::NotFound, ms(1));
    assert!(s.next_requests(ms(2)).is_empty());
    s.add_peer(2, Holdings::All);
    let a = s.next_requests(ms(3));
    assert_eq!(a.iter().map(|a| a.peer).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn io_failures_back_off_then_drop_the_peer() {
    let cfg = SchedulerConfig {
        max_failures: 3,
        ..SchedulerConfig::default()
    };
    let mut s: SyncScheduler<u8> = SyncScheduler::new(vec![10; 1], cfg);
    s.add_peer(1, Holdings::All);
    let mut now = ms(0);
    for round in 0..3 {
        let a = s.next_requests(now);
        assert_eq!(a.len(), 1, "round {round}");
        s.on_failed(&1, 0, Failure::Io, now);
        assert!(s.next_requests(now).is_empty(), "backing off");
        match s.next_wakeup(now) {
            Some(t) => now = t,
            None => break,
        }
    }
    assert_eq!(s.peer_count(), 0);
}

#[test]
fn empty_object_is_complete() {
    let s: SyncScheduler<u8> = SyncScheduler::new(vec![], SchedulerConfig::default());
    assert!(s.is_complete());
}

fn arb_peer(n: usize) -> impl Strategy<Value = SimPeer> {
    (
        1e4f64..1e8,
        0u64..400,
        prop::option::weighted(0.3, prop::collection::vec(any::<bool>(), n)),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(rate, lat, holds, corrupt, stalled)| SimPeer {
            rate,
            latency: ms(lat),
            holds,
            corrupt,
            stalled,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any mix of fast, slow, partial, corrupt and stalled peers: as long as one honest complete
    /// seeder exists the transfer completes, every chunk is accepted exactly once, nothing is taken
    /// from a corrupt peer, and each peer has at most one end-game duplicate in flight.
    #[test]
    fn transfer_completes_with_one_honest_seeder(
        n in 1usize..60,
        size in 1u32..300_000,
        others in prop::collection::vec(arb_peer(60), 0..5),
        honest_rate in 1e4f64..1e8,
        done_mask in prop::collection::vec(any::<bool>(), 60),
    ) {
        let sizes = vec![size; n];
        let mut peers = others.clone();
        peers.push(seeder(honest_rate, 50));
        for p in &mut peers {
            if let Some(h) = &mut p.holds { h.truncate(n); }
        }
        let done: Vec<u32> = (0..n as u32).filter(|&c| done_mask[c as usize] && c % 2 == 0).collect();
        let r = simulate(&sizes, &peers, &done, SchedulerConfig::default(), Duration::from_secs(120));
        let mut acc = r.accepted.clone();
        acc.sort_unstable();
        let expect: Vec<u32> = (0..n as u32).filter(|c| !done.contains(c)).collect();
        prop_assert_eq!(acc, expect);
        prop_assert!(!r.requested_done);
        for (i, p) in peers.iter().enumerate() {
            if p.corrupt {
                prop_assert!(!r.per_peer_chunks.contains_key(&i));
            }
        }
        prop_assert!(r.max_duplicates_in_flight <= 1);
    }

    /// Peers' order of arrival does not matter for completion, and waste stays bounded: with honest
    /// seeders only, bytes delivered ≤ object + one chunk per peer per end-game round.
    #[test]
    fn honest_waste_is_bounded(
        n in 1usize..80,
        rates in prop::collection::vec(1e5f64..1e8, 1..5),
    ) {
        let sizes = vec![65_536u32; n];
        let peers: Vec<SimPeer> = rates.iter().map(|&r| seeder(r, 20)).collect();
        let r = simulate(&sizes, &peers, &[], SchedulerConfig::default(), Duration::from_secs(120));
        prop_assert_eq!(r.accepted.len(), n);
        let total = 65_536u64 * n as u64;
        let waste = r.delivered_bytes - total;
        prop_assert!(waste <= 65_536 * peers.len() as u64 * 2, "waste {} over {} peers", waste, peers.len());
    }
}
