//! The error kinds that callers and tests match on; everything else travels as `anyhow` context.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or bad label/template input: exit code 2, before any image is processed.
    #[error("{0}")]
    Usage(String),
    /// The model could not be found, fetched or loaded: exit code 2.
    #[error("model {model}: {reason}")]
    Model { model: String, reason: String },
    /// One input image failed; the batch goes on.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
}
