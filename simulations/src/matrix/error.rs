//! Why a matrix could not be read, run or summarised.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The matrix file is not valid TOML or does not describe a matrix.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cell's generated scenario does not parse (a bug in the generator, or a bad cell).
    #[error("cell {cell}: {message}")]
    Cell { cell: String, message: String },
    #[error("encoding the summary: {0}")]
    Encode(String),
}

impl MatrixError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        MatrixError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
