//! Amplification: bytes a node sends to an address that has not proven it receives, for each kind
//! of datagram sent in that address's name, against the bytes sent in its name. It prints one line
//! per kind (`ZDN_AMPLIFICATION_OUT=file` writes them there too); docs/benchmarks.md
//! "Amplification".

use super::*;
use zdn_protocol::paced::EndReason;

use std::io::Write as _;

use zdn_test_support::quic_probe::quic_initial_reflection;

/// One row: what was sent in the victim's name and what the victim got.
struct Row {
    what: &'static str,
    sent: u64,
    datagrams: u64,
    received: u64,
    received_datagrams: u64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.received as f64 / self.sent.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "amplification {:<34} sent {:>6} B in {:>3} datagrams, got {:>6} B in {:>3} datagrams, ratio {:.3}",
            self.what, self.sent, self.datagrams, self.received, self.received_datagrams, self.ratio()
        )
    }
}

/// Sends `n` datagrams made by `make` from a fresh victim address to `to`, one per 250 ms (faster
/// than the lane answers one address), and counts what comes back to it.
async fn probe(
    what: &'static str,
    victim_ip: &str,
    to: SocketAddr,
    n: u32,
    make: &mut dyn FnMut(u32) -> Vec<u8>,
) -> Row {
    let mut victim = CountingSocket::bind(victim_ip).await.unwrap();
    for i in 0..n {
        victim.send_to(&make(i), to).await.unwrap();
        victim.drain(Duration::from_millis(250), 0).await;
    }
    victim.drain(Duration::from_secs(2), 0).await;
    Row {
        what,
        sent: victim.sent_bytes,
        datagrams: u64::from(n),
        received: victim.received_bytes,
        received_datagrams: victim.received_datagrams,
    }
}

/// Every kind of datagram the paced lane takes, sent in a victim's name by a peer that holds the
/// session's key (the strongest case: its datagrams are authentic) and by a stranger who does not,
/// and a QUIC client's first flight to the node's QUIC listener. The lane never sends a victim more
/// than was sent in its name. QUIC's handshake, before the client's address is validated, may send
/// about three times what it received (RFC 9000 §8.1; libp2p's QUIC listener does not use Retry):
/// measured and reported, not held to 1 (docs/limits.md, "Hostile peers").
#[test]
fn amplification_per_request_type() {
    let p = publish(2);
    let home = p.home.path();
    let mut tcp = NodeProc::start_on(
        home,
        "/ip4/127.0.0.1/tcp/0",
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    let second = tcp.wait_for("listening ", Duration::from_secs(30));
    let second = second.trim_start_matches("listening ").to_string();
    // The two addresses come in either order.
    let (tcp_addr, quic_addr) = if second.contains("quic-v1") {
        (tcp.addr.clone(), second)
    } else {
        (second, tcp.addr.clone())
    };
    let quic_addr: Multiaddr = quic_addr.parse().unwrap();
    let base: Hash = p.base.parse().unwrap();
    let rows = rt().block_on(async {
        let hostile = Hostile::connect(&tcp_addr).await.unwrap();
        let session = hostile
            .open_paced(base, 1_000_000, MAX_PAYLOAD)
            .await
            .unwrap()
            .expect("a session");
        let to = lane(session.udp_port);
        let mut sealer = Sealer::new(&session.key);
        let mut rows = Vec::new();
        rows.push(
            probe("lane Hello (sealed)", "127.0.0.21", to, 20, &mut |_| {
                sealer.seal(&ToSender::Hello)
            })
            .await,
        );
        rows.push(
            probe(
                "lane Ack (sealed, rate u64::MAX)",
                "127.0.0.22",
                to,
                20,
                &mut |_| {
                    sealer.seal(&ToSender::Ack {
                        rate_bps: u64::MAX,
                        cumulative: 0,
                        queue_us: 0,
                        echo_sent_us: 0,
                        echo_recv_us: 0,
                        received: 0,
                        ranges: Vec::new(),
                    })
                },
            )
            .await,
        );
        rows.push(
            probe("lane Probe (sealed)", "127.0.0.27", to, 20, &mut |_| {
                sealer.seal(&ToSender::Probe)
            })
            .await,
        );
        rows.push(
            probe(
                "lane Response, wrong nonce (sealed)",
                "127.0.0.23",
                to,
                20,
                &mut |i| {
                    sealer.seal(&ToSender::Response {
                        nonce: i.to_le_bytes().repeat(2).try_into().unwrap(),
                    })
                },
            )
            .await,
        );
        rows.push(
            probe(
                "lane datagram, no key (forged)",
                "127.0.0.24",
                to,
                20,
                &mut |i| vec![(i % 4) as u8; 1200],
            )
            .await,
        );
        // Done last: it ends the session.
        rows.push(
            probe("lane Done (sealed)", "127.0.0.25", to, 3, &mut |_| {
                sealer.seal(&ToSender::Done)
            })
            .await,
        );
        drop(session);
        drop(hostile);
        let quic = quic_socket(&quic_addr);
        let mut victim = CountingSocket::bind("127.0.0.26").await.unwrap();
        let id = peer_in(&quic_addr).unwrap();
        let sent = quic_initial_reflection(quic, id, &mut victim, Duration::from_secs(10))
            .await
            .unwrap();
        rows.push(Row {
            what: "QUIC first flight (libp2p listener)",
            sent: victim.sent_bytes,
            datagrams: sent as u64,
            received: victim.received_bytes,
            received_datagrams: victim.received_datagrams,
        });
        rows
    });
    let lines: Vec<String> = rows.iter().map(Row::line).collect();
    for l in &lines {
        println!("{l}");
    }
    if let Ok(path) = std::env::var("ZDN_AMPLIFICATION_OUT") {
        let mut f = std::fs::File::create(path).unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
    }
    for r in rows.iter().filter(|r| r.what.starts_with("lane")) {
        assert!(r.ratio() <= 1.0, "{}", r.line());
    }
    let hello = &rows[0];
    assert!(
        hello.received_datagrams > 0,
        "the lane answers a Hello with a challenge"
    );
    // QUIC, before a client's address is validated: RFC 9000 §8.1 allows 3×; quinn sent 3.19×
    // when measured once (no report committed: unverified). A guard against it getting worse, not
    // the goal of 1.
    let quic = rows.last().unwrap();
    assert!(
        quic.received > 0,
        "the QUIC listener answered: {}",
        quic.line()
    );
    assert!(quic.ratio() <= 3.5, "{}", quic.line());
    tcp.stop();
}

/// The UDP address of a `/ip4/…/udp/…/quic-v1` multiaddr.
fn quic_socket(a: &Multiaddr) -> SocketAddr {
    let s = a.to_string();
    let parts: Vec<&str> = s.split('/').collect();
    let ip = parts
        .iter()
        .position(|p| *p == "ip4")
        .map(|i| parts[i + 1])
        .unwrap();
    let port = parts
        .iter()
        .position(|p| *p == "udp")
        .map(|i| parts[i + 1])
        .unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

/// A request names the UDP port its sender listens on, and the lane challenges that port of the
/// connection's address at once (a round trip sooner than the challenge a Hello draws). Named in
/// a victim's place, that port gets one challenge, smaller than the request, and nothing else:
/// no data goes to an address that has not answered.
#[test]
fn a_port_named_in_a_request_gets_one_small_challenge_and_nothing_more() {
    let p = publish(2);
    let node = NodeProc::start(p.home.path(), &[]);
    let base: Hash = p.base.parse().unwrap();
    rt().block_on(async {
        let hostile = Hostile::connect(&node.addr).await.unwrap();
        // The hostile peer's own address (its connection's), another port: the victim.
        let mut victim = CountingSocket::bind("127.0.0.1").await.unwrap();
        let port = victim.socket.local_addr().unwrap().port();
        let session = hostile
            .open_paced_naming(base, 1_000_000, MAX_PAYLOAD, port)
            .await
            .unwrap()
            .expect("a session");
        let got = victim.drain(Duration::from_secs(3), 4).await;
        assert_eq!(victim.received_datagrams, 1, "one challenge: {got:?}");
        // A challenge: 4-byte number, tag byte, 8-byte nonce, 16-byte tag; the request was 51
        // bytes and more.
        assert_eq!(victim.received_bytes, 29, "{got:?}");
        drop(session);
    });
    node.stop();
}

/// A session that ended on the receiver's `Done` keeps its port open a moment: the `Done`s a
/// receiver repeats after the first are read and dropped, not answered with ICMP
/// port-unreachables (77 bytes each down the receiver's link). Seen from a connected UDP
/// socket: an ICMP error for it would make its next receive fail with "connection refused".
#[test]
fn late_copies_of_done_reach_an_open_port_and_get_no_answer() {
    let p = publish(2);
    let node = NodeProc::start(p.home.path(), &[]);
    let base: Hash = p.base.parse().unwrap();
    rt().block_on(async {
        let hostile = Hostile::connect(&node.addr).await.unwrap();
        let mut session = hostile
            .open_paced(base, 1_000_000, MAX_PAYLOAD)
            .await
            .unwrap()
            .expect("a session");
        let to = lane(session.udp_port);
        let mut sealer = Sealer::new(&session.key);
        let mut sock = CountingSocket::bind("127.0.0.1").await.unwrap();
        validate(&mut sock, &mut sealer, to).await;
        // Data flows to the proven address; then the receiver says Done.
        sock.drain(Duration::from_millis(300), 0).await;
        assert!(sock.received_datagrams > 0, "the session sends data");
        sock.send_to(&sealer.seal(&ToSender::Done), to)
            .await
            .unwrap();
        // The sender ended the session as complete (what keeps its port open).
        let ended = frame::read(&mut session.stream, 16, Duration::from_secs(5))
            .await
            .expect("the session ends on Done");
        assert!(
            matches!(
                PacedResponse::decode(&ended),
                Ok(PacedResponse::Ended(r)) if r == EndReason::Complete
            ),
            "ended as complete"
        );
        sock.drain(Duration::from_millis(300), 0).await;
        // Two more copies, as a receiver sends them, from a socket connected to that port.
        sock.socket.connect(to).await.unwrap();
        for _ in 0..2 {
            sock.socket
                .send(&sealer.seal(&ToSender::Done))
                .await
                .unwrap();
        }
        let mut buf = [0u8; 2048];
        let end = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            match tokio::time::timeout_at(end, sock.socket.recv(&mut buf)).await {
                // Data already on its way before the Done: drained.
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("the session's port answered a late Done with an error: {e}"),
                Err(_) => break,
            }
        }
        drop(session);
    });
    node.stop();
}
