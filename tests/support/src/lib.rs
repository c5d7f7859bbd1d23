//! Test-only support for zdn's end-to-end tests. Nothing in the product depends on this crate.
//!
//! [`adversary`]: a hostile peer that speaks zdn's protocols from fresh libp2p identities (free to
//! make) and raw UDP sockets on other loopback addresses (what a spoofed source looks like to the
//! node), driving a real `zdn node run` the way an attacker would.
//!
//! [`require`]: preconditions of tests that need something of the machine (fail, or an explicit,
//! counted skip).

pub mod adversary;
pub mod frame;
pub mod require;
