//! Typed errors of the library. Every message says what is wrong and, where the user can act,
//! what to do; the binaries prefix it with the file it concerns.

use std::path::PathBuf;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `.bnet` file breaks a rule of `formats/bnet.md`.
    #[error("not a valid .bnet file: {0}")]
    Format(String),
    /// A `.bnet` file of a major version this build does not know.
    #[error(
        "unsupported .bnet format version {found}.x (this build reads {supported}.x): upgrade bitnet-tools"
    )]
    Version { found: u16, supported: u16 },
    /// A GGUF file that is malformed or that we cannot convert (the message starts "GGUF:").
    #[error("{0}")]
    Gguf(String),
    /// A Hugging Face checkpoint that is malformed or that we cannot convert.
    #[error("{0}")]
    Checkpoint(String),
    /// An input or output file problem, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing an output failed; the partial output has been removed.
    #[error("{0}")]
    Output(String),
    /// A command-line usage problem.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn format(msg: impl Into<String>) -> Self {
        Error::Format(msg.into())
    }
    pub(crate) fn gguf(msg: impl std::fmt::Display) -> Self {
        Error::Gguf(format!("GGUF: {msg}"))
    }
    pub(crate) fn checkpoint(msg: impl Into<String>) -> Self {
        Error::Checkpoint(msg.into())
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
