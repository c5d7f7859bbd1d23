//! zdn's end-to-end tests: each module runs the real `zdn` binary (and real nodes, over loopback)
//! the way a user would. One test binary, so candle, libp2p and rocksdb are linked once.
//!
//! - `delta`, `store`, `soup`, `soup_store`: the offline commands and the store;
//! - `interrupt`: Ctrl-C and other signals while a command writes (its temporaries removed);
//! - `net`, `kad`, `paced`: nodes, fetches, gossip, the DHT, the paced lane;
//! - `station`: a station's link to its hub (kept connected, outages at start, the catch-up);
//! - `lan`: mDNS on a real LAN segment (network namespaces; root);
//! - `adversary`: hostile peers against a real node;
//! - `minilm_pair`, `quality`: the real MiniLM pair from PyPI (installed on first use);
//! - `decoder`: the real decoder pair of scripts/make-decoder-pair.sh (the Llama forward pass
//!   against transformers, `zdn eval`'s decoder measure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod adversary;
mod decoder;
mod decoder_calibrate;
mod delta;
mod folder;
mod folder_delta;
mod interrupt;
mod kad;
mod lan;
mod local;
mod lora;
mod minilm_pair;
mod net;
mod paced;
mod quality;
mod soup;
mod soup_folder;
mod soup_store;
mod station;
mod store;
