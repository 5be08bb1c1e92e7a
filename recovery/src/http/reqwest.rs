//! `Classify` for `reqwest::Error` (feature `reqwest`).

use std::time::SystemTime;

use super::{HeaderMap, decide};
use crate::retry::{Classify, Decision};

/// Time-outs are [`Decision::Timeout`]; connection, request and body errors
/// are transient; an error that carries a status (`error_for_status`)
/// follows the status rules of [`decide`] (reqwest's error keeps no headers:
/// for `Retry-After`, call [`check`](super::check) on the response
/// instead); building, redirect and decoding errors are permanent.
impl Classify for ::reqwest::Error {
    fn classify(&self) -> Decision {
        if let Some(status) = self.status() {
            return decide(status, &HeaderMap::new(), SystemTime::now());
        }
        if self.is_timeout() {
            Decision::Timeout
        } else if self.is_builder() || self.is_redirect() || self.is_decode() {
            Decision::Permanent
        } else {
            // Connect, request, body, upgrade: the connection failed.
            Decision::Retry
        }
    }
}
