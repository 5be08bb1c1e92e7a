//! `Classify` for `ureq::Error` (feature `ureq`, ureq 3).

use std::time::SystemTime;

use super::{HeaderMap, StatusCode, decide};
use crate::retry::{Classify, Decision};

/// A status error follows the status rules of [`decide`] (ureq's error
/// keeps no headers: for `Retry-After`, turn off `http_status_as_error`
/// and call [`check`](super::check) on the response); time-outs are
/// [`Decision::Timeout`]; I/O errors classify as [`std::io::Error`] does;
/// a failed connection, an unknown host (DNS may recover), a stalled body
/// and a protocol error are transient; a bad URL, a bad request, too many
/// redirects, a body or header over its limit and TLS set-up are
/// permanent.
impl Classify for ::ureq::Error {
    fn classify(&self) -> Decision {
        use ::ureq::Error as E;
        match self {
            E::StatusCode(code) => match StatusCode::from_u16(*code) {
                Ok(status) => decide(status, &HeaderMap::new(), SystemTime::now()),
                Err(_) => Decision::Permanent,
            },
            E::Timeout(_) => Decision::Timeout,
            E::Io(e) => e.classify(),
            E::ConnectionFailed | E::HostNotFound | E::BodyStalled | E::Protocol(_) => {
                Decision::Retry
            }
            E::Http(_)
            | E::BadUri(_)
            | E::InvalidProxyUrl
            | E::RedirectFailed
            | E::TooManyRedirects
            | E::BodyExceedsLimit(_)
            | E::LargeResponseHeader(..)
            | E::RequireHttpsOnly(_)
            | E::TlsRequired => Decision::Permanent,
            _ => Decision::Retry,
        }
    }
}
