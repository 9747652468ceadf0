//! [`ConfigError`]: one problem in Verity's configuration, with the dotted path of the key it
//! concerns, such as `sinks.outputs.splunk.endpoint`.
//!
//! Every crate's configuration checks return this one type, so `verity validate` prints each
//! problem the same way (`path: message`) whichever section it was found in.

/// One problem in the configuration, with the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The dotted key path, with list indices in brackets (`otlp.tokens[0].name`).
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}
