//! The matrix runner behind `zdn-sim matrix FILE.toml`: one scenario per cell of a grid of links
//! (rate × one-way delay × loss) plus extra cells (stated rate, outages, rate changes), each run
//! by `zdn-sim scenario` with its TCP reference, then one summary (JSON and a markdown table)
//! that says which cells meet the goals ([`table::Goals`]).

pub mod cells;
pub mod error;
pub mod midway;
pub mod run;
pub mod spec;
pub mod table;
#[cfg(test)]
mod tests;

pub use error::MatrixError;
pub use spec::Matrix;
