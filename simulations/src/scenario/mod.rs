//! The scenario runner behind `zdn-sim scenario FILE.toml`: real `zdn` nodes in network namespaces
//! joined by emulated links ([`spec`] describes the file), fetches measured at the link, a JSON
//! report and a PNG plot.

pub mod error;
pub mod link;
pub mod objects;
pub mod plot;
pub mod process;
pub mod reference;
pub mod report;
pub mod runner;
pub mod spec;
#[cfg(test)]
mod spec_tests;
pub mod summary;
pub mod text;
pub mod topology;
pub mod zdn;

pub use error::ScenarioError;
pub use report::Report;
pub use runner::{check_available, run, write, RunOptions};
pub use spec::Scenario;
