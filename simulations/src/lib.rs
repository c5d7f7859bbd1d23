//! zdn-simulations: the scenario runner (`zdn-sim scenario FILE.toml`) that starts real `zdn` nodes
//! in network namespaces behind emulated links (zdn-linkem), fetches, measures and writes a JSON
//! report and a PNG plot.

pub mod matrix;
pub mod scenario;
