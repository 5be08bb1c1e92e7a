//! Retry decisions for HTTP call sites (feature `http`): a status and its
//! headers in, a [`Decision`] out, with the server's own word on when to
//! come back (`Retry-After` in every form, and rate-limit headers).
//!
//! Built on the `http` crate's [`StatusCode`] and [`HeaderMap`], which
//! reqwest, ureq 3, hyper and axum share. The one-line form, inside a
//! retrying function:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use recovery::http::{StatusCode, HeaderMap, HeaderValue};
//! use recovery::{Classify, Decision};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", HeaderValue::from_static("2"));
//! // What a client gets back: fails on 4xx/5xx with the server's hint.
//! let err = recovery::http::check(StatusCode::TOO_MANY_REQUESTS, &headers).unwrap_err();
//! assert_eq!(err.classify(), Decision::RetryAfter(std::time::Duration::from_secs(2)));
//! assert!(recovery::http::check(StatusCode::OK, &headers).is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! # The rules
//! - 408, 425, 429, 500, 502, 503, 504 are transient (408 and 504 as
//!   [`Decision::Timeout`]); any other 4xx is permanent, any other 5xx
//!   transient. 1xx, 2xx and 3xx are not errors: [`decide`] gives
//!   [`Decision::Permanent`] for them (there is nothing to retry) and
//!   [`check`] gives `Ok`.
//! - A 403 or 429 with `x-ratelimit-remaining: 0` is a rate limit:
//!   transient, whatever the 4xx rule says.
//! - Hints, the first that parses wins: `retry-after-ms` (milliseconds),
//!   `Retry-After` as delta-seconds, `Retry-After` as an HTTP-date (against
//!   `now`; a date in the past means no extra wait), and for a rate limit,
//!   `x-ratelimit-reset` (Unix epoch seconds). A hint that is malformed,
//!   negative or longer than [`MAX_HINT`] is ignored: never a panic, never
//!   a wait of years.
//! - A hint sets the least delay; the retry loop still bounds it by
//!   `max_delay` and `max_elapsed`. No jitter is added on top of a hint:
//!   the delay is the larger of the schedule's (jittered) delay and the
//!   hint.

#[cfg(feature = "reqwest")]
mod reqwest;
#[cfg(feature = "ureq")]
mod ureq;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ::http::{HeaderMap, HeaderValue, StatusCode};

use crate::retry::{Classify, Decision};

/// The longest hint believed: anything longer is taken for a mistake and
/// ignored (the schedule's own delay applies).
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// What to do after a response with this status and these headers; `now`
/// is the time an HTTP-date is compared with (`SystemTime::now()`,
/// or a fixed time in tests).
pub fn decide(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Decision {
    let rate_limited = matches!(status.as_u16(), 403 | 429)
        && header(headers, "x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
    let transient = match status.as_u16() {
        408 | 425 | 429 | 500 | 502 | 503 | 504 => true,
        _ if rate_limited => true,
        400..=499 => false,
        500..=599 => true,
        // 1xx, 2xx, 3xx: not an error, nothing to retry.
        _ => false,
    };
    if !transient {
        return Decision::Permanent;
    }
    match hint(headers, rate_limited, now) {
        Some(delay) if !delay.is_zero() => Decision::RetryAfter(delay),
        _ if matches!(status.as_u16(), 408 | 504) => Decision::Timeout,
        _ => Decision::Retry,
    }
}

/// The server's hint, the first form in the documented order that parses
/// and is believable; a malformed one is skipped, not fatal.
fn hint(headers: &HeaderMap, rate_limited: bool, now: SystemTime) -> Option<Duration> {
    let until = |at: SystemTime| at.duration_since(now).unwrap_or(Duration::ZERO);
    let retry_after = header(headers, "retry-after").map(str::trim);
    let millis = || {
        let ms = number(header(headers, "retry-after-ms")?)?;
        believable(Duration::try_from_secs_f64(ms / 1000.0).ok()?)
    };
    let seconds = || believable(Duration::from_secs(digits(retry_after?)?));
    let date = || believable(until(httpdate::parse_http_date(retry_after?).ok()?));
    let reset = || {
        let epoch = digits(header(headers, "x-ratelimit-reset")?.trim())?;
        believable(until(UNIX_EPOCH.checked_add(Duration::from_secs(epoch))?))
    };
    millis()
        .or_else(seconds)
        .or_else(date)
        .or_else(|| rate_limited.then(reset).flatten())
}

/// A whole number written with ASCII digits only (no sign, no space).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A header's value as text, if it is there and is text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// A non-negative, finite number.
fn number(text: &str) -> Option<f64> {
    let n: f64 = text.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n)
}

fn believable(delay: Duration) -> Option<Duration> {
    (delay <= MAX_HINT).then_some(delay)
}

/// An HTTP error response as an error value: its status, and what to do
/// about it (decided when it was made, hint included). Made by [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusError {
    status: StatusCode,
    decision: Decision,
}

impl StatusError {
    /// The error for a response with `status` and `headers`, with hints
    /// read against `now`.
    pub fn at(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        StatusError {
            status,
            decision: decide(status, headers, now),
        }
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// `HTTP 429 Too Many Requests (the server asks to wait 2s)`.
impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(delay) = self.decision.hint() {
            // Whole milliseconds: `200ms`, `1.5s`.
            let ms = Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            write!(f, " (the server asks to wait {ms:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for StatusError {}

impl Classify for StatusError {
    fn classify(&self) -> Decision {
        self.decision
    }
}

/// `Ok` for a response that is not an error (1xx, 2xx, 3xx); for a 4xx or
/// 5xx, a [`StatusError`] that classifies as [`decide`] says, hints read
/// now.
pub fn check(status: StatusCode, headers: &HeaderMap) -> Result<(), StatusError> {
    if status.is_client_error() || status.is_server_error() {
        Err(StatusError::at(status, headers, SystemTime::now()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
