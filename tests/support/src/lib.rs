//! Test-only support for zdn's end-to-end tests. Nothing in the product depends on this crate.
//!
//! [`adversary`]: a hostile peer that speaks zdn's protocols from fresh libp2p identities (free to
//! make) and raw UDP sockets on other loopback addresses (what a spoofed source looks like to the
//! node), driving a real `zdn node run` the way an attacker would. [`crowd`]: many such identities
//! from many addresses at once. [`trickler`]: a hostile peer that listens and answers as slowly as
//! it can without being cut off by a progress timeout. [`kad_raw`]: DHT provider records written by
//! hand. [`quic_probe`]: what a QUIC listener sends to a forged source address. [`fuzz`]: a
//! stable-Rust fuzzer of every parser of outside input (the `zdn-fuzz` binary runs it long).
//!
//! [`require`]: preconditions of tests that need something of the machine (fail, or an explicit,
//! counted skip).

pub mod adversary;
pub mod crowd;
pub mod frame;
pub mod fuzz;
pub mod identity;
pub mod kad_raw;
pub mod quic_probe;
pub mod require;
pub mod source_tcp;
pub mod trickler;
