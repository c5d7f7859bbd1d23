//! The forwarder: one reader and one writer thread per direction. The reader takes each packet
//! off the source TUN device, asks the [`Shaper`] what happens to it, and hands survivors to the
//! writer with their delivery time; the writer sleeps until then and injects them at the far end.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shaper::{Shaper, Verdict};
use crate::tun::Tun;

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    pub queue_full: AtomicU64,
    pub lost: AtomicU64,
    pub outage: AtomicU64,
}

impl DirectionStats {
    pub fn to_json(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{{\"packets_in\":{},\"bytes_in\":{},\"delivered\":{},\"bytes_delivered\":{},\"queue_full\":{},\"lost\":{},\"outage\":{}}}",
            g(&self.packets_in),
            g(&self.bytes_in),
            g(&self.delivered),
            g(&self.bytes_delivered),
            g(&self.queue_full),
            g(&self.lost),
            g(&self.outage)
        )
    }
}

/// Waits up to 100 ms for the device to be readable, so the reader notices `stop`.
fn readable(tun: &Tun) -> bool {
    let mut pfd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid, initialised pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.raw_fd()
    }
}

/// Starts forwarding `from` → `to` through `shaper` until `stop` is set. Times are measured from
/// `epoch` (so outages are relative to the link's start).
pub fn spawn_direction(
    mut from: Tun,
    mut to: Tun,
    mut shaper: Shaper,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<DirectionStats>,
) -> std::io::Result<(JoinHandle<()>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<(Duration, Vec<u8>)>();
    let stop_r = stop.clone();
    let stats_r = stats.clone();
    let reader = std::thread::Builder::new()
        .name(format!("linkem-read-{}", from.name()))
        .spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop_r.load(Ordering::Relaxed) {
                if !readable(&from) {
                    continue;
                }
                let Ok(n) = from.recv(&mut buf) else { continue };
                let now = epoch.elapsed();
                stats_r.packets_in.fetch_add(1, Ordering::Relaxed);
                stats_r.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                match shaper.offer(now, n) {
                    Verdict::Deliver(at) => {
                        if tx.send((at, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Verdict::QueueFull => {
                        stats_r.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Lost => {
                        stats_r.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Outage => {
                        stats_r.outage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })?;
    let writer = std::thread::Builder::new()
        .name(format!("linkem-write-{}", to.name()))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((at, pkt)) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let now = epoch.elapsed();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if to.send(&pkt).is_ok() {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    stats
                        .bytes_delivered
                        .fetch_add(pkt.len() as u64, Ordering::Relaxed);
                }
            }
        })?;
    Ok((reader, writer))
}
