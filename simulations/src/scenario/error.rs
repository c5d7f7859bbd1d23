//! Why a scenario could not be read or run.

use std::io;
use std::path::PathBuf;

use zdn_linkem::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario file is not valid TOML or does not describe a scenario.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// The machine cannot run it (not root, no TUN device, no `ip`, no zdn binary).
    #[error("cannot run scenarios here: {0}")]
    Unavailable(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A `zdn` command failed or printed something unexpected.
    #[error("`zdn {command}` failed: {message}")]
    Zdn { command: String, message: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The scenario ran past its `timeout`, or was interrupted.
    #[error("{0}")]
    Stopped(String),
    #[error("writing the plot: {0}")]
    Plot(String),
    #[error("encoding the report: {0}")]
    Encode(String),
}

impl ScenarioError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ScenarioError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
