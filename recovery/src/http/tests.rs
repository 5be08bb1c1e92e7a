use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

#[test]
fn statuses_map_to_decisions() {
    let none = HeaderMap::new();
    for code in [425, 429, 500, 502, 503, 599] {
        assert_eq!(
            decide(status(code), &none, now()),
            Decision::Retry,
            "{code}"
        );
    }
    for code in [408, 504] {
        assert_eq!(
            decide(status(code), &none, now()),
            Decision::Timeout,
            "{code}"
        );
    }
    for code in [400, 401, 403, 404, 409, 422, 499, 200, 204, 301, 304, 101] {
        assert_eq!(
            decide(status(code), &none, now()),
            Decision::Permanent,
            "{code}"
        );
    }
}

#[test]
fn hints_in_every_form_and_their_order() {
    let d = |pairs: &[(&'static str, &str)]| decide(status(503), &headers(pairs), now());
    let after = |secs: f64| Decision::RetryAfter(Duration::from_secs_f64(secs));
    assert_eq!(d(&[("retry-after-ms", "1500")]), after(1.5));
    assert_eq!(d(&[("retry-after", "7")]), after(7.0));
    let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
    assert_eq!(d(&[("retry-after", &date)]), after(90.0));
    // A date in the past: no extra wait.
    let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
    assert_eq!(d(&[("retry-after", &past)]), Decision::Retry);
    // The milliseconds form first, then seconds.
    assert_eq!(
        d(&[("retry-after", "7"), ("retry-after-ms", "250")]),
        after(0.25)
    );
    // A malformed first form does not hide a later one.
    assert_eq!(
        d(&[("retry-after-ms", "soon"), ("retry-after", "3")]),
        after(3.0)
    );
}

#[test]
fn rate_limit_headers_count_only_when_exhausted() {
    let reset = (now() + Duration::from_secs(42))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let exhausted = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", &reset),
    ]);
    assert_eq!(
        decide(status(403), &exhausted, now()),
        Decision::RetryAfter(Duration::from_secs(42))
    );
    assert_eq!(
        decide(status(429), &exhausted, now()),
        Decision::RetryAfter(Duration::from_secs(42))
    );
    let left = headers(&[
        ("x-ratelimit-remaining", "10"),
        ("x-ratelimit-reset", &reset),
    ]);
    assert_eq!(decide(status(403), &left, now()), Decision::Permanent);
    assert_eq!(decide(status(429), &left, now()), Decision::Retry);
    // Retry-After comes before the reset time.
    let both = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", &reset),
        ("retry-after", "5"),
    ]);
    assert_eq!(
        decide(status(429), &both, now()),
        Decision::RetryAfter(Duration::from_secs(5))
    );
}

#[test]
fn malformed_negative_and_absurd_hints_are_ignored() {
    let d = |pairs: &[(&'static str, &str)]| decide(status(429), &headers(pairs), now());
    for bad in ["-5", "1.5", " ", "5s", "99999999999999999999", "864000"] {
        assert_eq!(d(&[("retry-after", bad)]), Decision::Retry, "{bad:?}");
    }
    for bad in ["-1", "NaN", "inf", "1e300", "86400001"] {
        assert_eq!(d(&[("retry-after-ms", bad)]), Decision::Retry, "{bad:?}");
    }
    let far = httpdate::fmt_http_date(now() + Duration::from_secs(400 * 24 * 3600));
    assert_eq!(d(&[("retry-after", &far)]), Decision::Retry);
}

#[test]
fn check_passes_successes_and_fails_errors_with_their_hint() {
    assert!(check(StatusCode::OK, &HeaderMap::new()).is_ok());
    assert!(check(StatusCode::NOT_MODIFIED, &HeaderMap::new()).is_ok());
    let err = check(
        StatusCode::SERVICE_UNAVAILABLE,
        &headers(&[("retry-after", "2")]),
    )
    .unwrap_err();
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.classify(), Decision::RetryAfter(Duration::from_secs(2)));
    assert_eq!(
        err.to_string(),
        "HTTP 503 Service Unavailable (the server asks to wait 2s)"
    );
    let err = check(StatusCode::NOT_FOUND, &HeaderMap::new()).unwrap_err();
    assert_eq!(err.classify(), Decision::Permanent);
    assert_eq!(err.to_string(), "HTTP 404 Not Found");
}

proptest! {
    #[test]
    fn any_header_bytes_give_a_bounded_decision_and_no_panic(
        code in 100u16..600,
        ms in proptest::collection::vec(any::<u8>(), 0..40),
        after in proptest::collection::vec(any::<u8>(), 0..40),
        remaining in proptest::collection::vec(any::<u8>(), 0..8),
        reset in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut map = HeaderMap::new();
        for (name, bytes) in [
            ("retry-after-ms", &ms),
            ("retry-after", &after),
            ("x-ratelimit-remaining", &remaining),
            ("x-ratelimit-reset", &reset),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(bytes) {
                map.insert(name, value);
            }
        }
        let decision = decide(status(code), &map, now());
        if let Some(hint) = decision.hint() {
            prop_assert!(hint <= MAX_HINT && !hint.is_zero());
        }
        if !status(code).is_client_error() && !status(code).is_server_error() {
            prop_assert_eq!(decision, Decision::Permanent);
        }
    }
}
