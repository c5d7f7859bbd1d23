//! The plain-TCP bulk transfer the scenarios compare zdn with: one connection, the kernel's own
//! congestion control, nothing else. Run inside the emulated link's namespaces (by `zdn-linkem
//! tcp-sink/tcp-send` and `zdn-sim`'s hidden subcommands of the same names).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// What the receiving end saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkReport {
    pub bytes: u64,
    /// From accept to end of stream.
    pub seconds: f64,
}

impl SinkReport {
    pub fn to_json(&self) -> String {
        format!("{{\"bytes\":{},\"seconds\":{}}}", self.bytes, self.seconds)
    }
}

/// Receives one TCP connection on `bind` to its end. Gives up waiting for the connection after
/// `accept_within` (a sender that never came must not leave a process behind).
pub fn tcp_sink(bind: &str, accept_within: Duration) -> io::Result<SinkReport> {
    let l = TcpListener::bind(bind)?;
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + accept_within;
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no sender connected",
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    s.set_nonblocking(false)?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(SinkReport {
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Sends `bytes` zero bytes over one TCP connection to `to`.
pub fn tcp_send(to: &str, bytes: u64) -> io::Result<()> {
    let mut s = TcpStream::connect(to)?;
    let buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.flush()?;
    Ok(())
}
