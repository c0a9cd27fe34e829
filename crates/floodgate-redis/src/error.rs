//! Why a [`RedisStore`](crate::RedisStore) could not be built, and how Redis errors map onto
//! [`StoreError`].

use std::fmt;

use floodgate_ratelimit::StoreError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why [`RedisStoreBuilder::build`](crate::RedisStoreBuilder::build) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The key prefix is empty or contains `{` or `}`.
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
    },
    /// A timeout is zero, so every connection or command would fail.
    ZeroTimeout {
        /// Which timeout: `"connection"` or `"response"`.
        which: &'static str,
    },
    /// The URL is not a Redis URL redis-rs understands.
    InvalidUrl(RedisError),
    /// Redis could not be reached, or refused the connection (authentication, TLS …).
    Connect(RedisError),
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPrefix { prefix } => write!(
                f,
                "the key prefix {prefix:?} is not usable: it must be non-empty and free of `{{` \
                 and `}}`, because it becomes the keys' Redis Cluster hash tag"
            ),
            Self::ZeroTimeout { which } => {
                write!(
                    f,
                    "the {which} timeout is zero; give it a duration above zero"
                )
            }
            Self::InvalidUrl(error) => write!(
                f,
                "the Redis URL is not valid ({error}); use redis://[user:password@]host[:port][/db]"
            ),
            Self::Connect(error) => write!(
                f,
                "could not connect to Redis ({error}); check that it runs and that the URL's \
                 host, port and credentials are right"
            ),
        }
    }
}

impl std::error::Error for RedisStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidPrefix { .. } | Self::ZeroTimeout { .. } => None,
            Self::InvalidUrl(error) | Self::Connect(error) => Some(error),
        }
    }
}

/// `Unavailable` when Redis cannot answer now (the connection, a timeout, a server that is
/// loading, failing over or read-only); `Failed` when it answered with an error.
pub(crate) fn store_error(error: RedisError) -> StoreError {
    if is_unavailable(&error) {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Failed(Box::new(error))
    }
}

fn is_unavailable(error: &RedisError) -> bool {
    // Response and connection timeouts are I/O errors (`TimedOut`) in redis-rs.
    error.is_io_error()
        || error.is_connection_dropped()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// A failure found on our side of the call (an unusable check, a reply that is not the
/// script's), for [`StoreError::Failed`].
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// A [`StoreError::Failed`] saying `what`.
pub(crate) fn failed(what: String) -> StoreError {
    StoreError::Failed(Box::new(Failure(what)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn lost_connections_and_timeouts_are_unavailable() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
        ] {
            let error = RedisError::from(io::Error::from(kind));
            assert!(
                matches!(store_error(error), StoreError::Unavailable(_)),
                "{kind:?}"
            );
        }
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert!(matches!(store_error(loading), StoreError::Unavailable(_)));
    }

    #[test]
    fn script_errors_and_bad_replies_are_failures() {
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "user_script:1: boom",
        ));
        assert!(matches!(store_error(script), StoreError::Failed(_)));
        let reply = RedisError::from((ErrorKind::UnexpectedReturnType, "not an array"));
        assert!(matches!(store_error(reply), StoreError::Failed(_)));
    }

    #[test]
    fn messages_say_what_to_do() {
        let prefix = RedisStoreError::InvalidPrefix {
            prefix: "a{b".to_owned(),
        };
        assert!(prefix.to_string().contains("hash tag"));
        let zero = RedisStoreError::ZeroTimeout { which: "response" };
        assert_eq!(
            zero.to_string(),
            "the response timeout is zero; give it a duration above zero"
        );
    }
}
