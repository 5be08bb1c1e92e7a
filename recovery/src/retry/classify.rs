//! Error classification: is an error worth another attempt, and when?

use std::io;
use std::time::Duration;

/// What to do about one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Transient: retry after the schedule's delay.
    Retry,
    /// Transient, and the other side said how long to wait (a `Retry-After`
    /// header, say). The delay is at least this long, yet still bounded by
    /// `max_delay` and by the deadline.
    RetryAfter(Duration),
    /// Transient, and the attempt timed out: retried like `Retry`, but a
    /// [`RetryBudget`](crate::RetryBudget) charges it its higher time-out
    /// cost (a time-out suggests an overloaded downstream).
    Timeout,
    /// Permanent: return the error now; another attempt cannot help.
    Permanent,
}

impl Decision {
    /// Whether the error may be retried.
    pub const fn is_transient(self) -> bool {
        !matches!(self, Decision::Permanent)
    }

    /// The retry-after hint, if any.
    pub const fn hint(self) -> Option<Duration> {
        match self {
            Decision::RetryAfter(d) => Some(d),
            _ => None,
        }
    }
}

/// An error type that knows whether it is transient.
///
/// Use it with `#[retryable(when = recovery::Classify::classify)]`, or call it
/// from your own classifier.
///
/// ```
/// use std::time::Duration;
/// use recovery::{Classify, Decision};
///
/// #[derive(Debug)]
/// enum ApiError { RateLimited { retry_after: Duration }, BadRequest }
///
/// impl Classify for ApiError {
///     fn classify(&self) -> Decision {
///         match self {
///             ApiError::RateLimited { retry_after } => Decision::RetryAfter(*retry_after),
///             ApiError::BadRequest => Decision::Permanent,
///         }
///     }
/// }
/// assert_eq!(ApiError::BadRequest.classify(), Decision::Permanent);
/// ```
pub trait Classify {
    /// Decides what to do about this error.
    fn classify(&self) -> Decision;
}

/// Interruptions, time-outs and dropped connections are transient; missing
/// files, refused permissions and malformed input are permanent. Kinds not
/// listed (`Other`, ...) are treated as transient: when in doubt, the policy's
/// attempt limit still bounds the work.
impl Classify for io::Error {
    fn classify(&self) -> Decision {
        use io::ErrorKind::*;
        match self.kind() {
            NotFound | PermissionDenied | InvalidInput | InvalidData | AlreadyExists
            | Unsupported => Decision::Permanent,
            TimedOut => Decision::Timeout,
            Interrupted | WouldBlock | ConnectionReset | ConnectionAborted | ConnectionRefused
            | BrokenPipe | UnexpectedEof => Decision::Retry,
            _ => Decision::Retry,
        }
    }
}

/// What a `when = ...` classifier may return: a plain `bool` (`true` means
/// transient) or a full [`Decision`].
pub trait IntoDecision {
    /// Converts the classifier's answer.
    fn into_decision(self) -> Decision;
}

impl IntoDecision for bool {
    fn into_decision(self) -> Decision {
        if self {
            Decision::Retry
        } else {
            Decision::Permanent
        }
    }
}

impl IntoDecision for Decision {
    fn into_decision(self) -> Decision {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io::ErrorKind::*;

    #[test]
    fn io_errors_are_classified_by_kind() {
        assert_eq!(io::Error::from(TimedOut).classify(), Decision::Timeout);
        for kind in [
            Interrupted,
            WouldBlock,
            ConnectionReset,
            ConnectionAborted,
            ConnectionRefused,
            BrokenPipe,
            UnexpectedEof,
        ] {
            assert_eq!(
                io::Error::from(kind).classify(),
                Decision::Retry,
                "{kind:?}"
            );
        }
        for kind in [
            NotFound,
            PermissionDenied,
            InvalidInput,
            InvalidData,
            AlreadyExists,
        ] {
            assert_eq!(
                io::Error::from(kind).classify(),
                Decision::Permanent,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn bool_answers_convert() {
        assert_eq!(true.into_decision(), Decision::Retry);
        assert_eq!(false.into_decision(), Decision::Permanent);
        assert!(Decision::RetryAfter(Duration::from_secs(1)).is_transient());
        assert_eq!(Decision::Retry.hint(), None);
    }
}
