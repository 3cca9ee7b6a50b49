//! What can go wrong on the docker runner, each said in one line with what to
//! do next.

use std::path::PathBuf;

/// An error of the docker runner.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers: no socket, no permission, nothing listening.
    #[error("cannot reach the Docker engine at {host}: {reason}; {hint}")]
    Unreachable {
        /// Where we looked (`DOCKER_HOST` or the default socket).
        host: String,
        /// Why it failed.
        reason: String,
        /// What the user can do about it.
        hint: &'static str,
    },
    /// A binary cannot be packaged into a `FROM scratch` image.
    #[error("cannot package {path} into an image: {reason}")]
    Package {
        /// The file.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Writing the build context failed.
    #[error("cannot write the image build context: {0}")]
    Context(String),
    /// The engine refused or failed a request.
    #[error("{context}: {message}")]
    Api {
        /// What we were doing.
        context: String,
        /// What the engine said.
        message: String,
        /// The client error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The request itself is wrong (a name, an image, a port); nothing was
    /// changed on the engine.
    #[error("{0}")]
    Invalid(String),
}

impl DockerError {
    /// Wraps an engine error with what we were doing, keeping the engine's
    /// own message (which usually says exactly what is wrong).
    pub fn api(context: impl Into<String>, source: bollard::errors::Error) -> DockerError {
        let message = match &source {
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                message.trim().to_string()
            }
            bollard::errors::Error::DockerStreamError { error } => error.trim().to_string(),
            other => other.to_string(),
        };
        DockerError::Api {
            context: context.into(),
            message,
            source,
        }
    }
}

/// The engine's HTTP status of a client error, if it answered at all.
pub fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
