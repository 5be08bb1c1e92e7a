//! `recovery::http` against a real HTTP server on loopback: each hint form,
//! each status class, malformed headers, the bounds (`max_delay`,
//! `max_elapsed`), and `Classify` for ureq's and reqwest's own errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use recovery::http::{StatusError, check};
use recovery::{Classify, Context, Decision, Event, IssueCode, Recorder, VirtualClock, retryable};
use recovery_suite::fake_api::{FakeApi, Reply};

/// A ureq agent that hands back 4xx/5xx responses instead of errors, so
/// their headers can be read.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// One GET: the body, or the status error with the server's hint.
fn get(url: &str) -> Result<String, StatusError> {
    let mut resp = agent().get(url).call().expect("the fake API answers");
    check(resp.status(), resp.headers())?;
    Ok(resp.body_mut().read_to_string().unwrap_or_default())
}

/// The decision for the first answer of a server that always gives `reply`.
fn decision_for(reply: Reply) -> Decision {
    let api = FakeApi::start(move |_, _| reply.clone()).unwrap();
    get(&format!("{}/x", api.url())).unwrap_err().classify()
}

#[test]
fn every_hint_form_read_off_the_wire() {
    let secs = |s: f64| Decision::RetryAfter(Duration::from_secs_f64(s));
    assert_eq!(
        decision_for(Reply::with(429, "retry-after-ms", "1500")),
        secs(1.5)
    );
    assert_eq!(
        decision_for(Reply::with(503, "Retry-After", "7")),
        secs(7.0)
    );
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    match decision_for(Reply::with(503, "Retry-After", &date)) {
        // Whole seconds on the wire; the clock moved on a little.
        Decision::RetryAfter(d) => assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
    assert_eq!(
        decision_for(Reply::with(503, "Retry-After", &past)),
        Decision::Retry
    );
    let reset = (SystemTime::now() + Duration::from_secs(30))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let limited = Reply::Respond(
        403,
        vec![
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), reset),
        ],
        String::new(),
    );
    match decision_for(limited) {
        Decision::RetryAfter(d) => assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_status_class_off_the_wire() {
    for (code, want) in [
        (429, Decision::Retry),
        (500, Decision::Retry),
        (503, Decision::Retry),
        (404, Decision::Permanent),
        (403, Decision::Permanent),
    ] {
        assert_eq!(decision_for(Reply::status(code, "")), want, "{code}");
    }
    let api = FakeApi::start(|_, _| Reply::status(200, "fine")).unwrap();
    assert_eq!(get(&format!("{}/ok", api.url())).unwrap(), "fine");
}

#[test]
fn malformed_hints_are_ignored_not_fatal() {
    for bad in [
        "-3",
        "soon",
        "1e9",
        "999999999999",
        "Thu, 99 Foo 2026 25:61:61 GMT",
    ] {
        assert_eq!(
            decision_for(Reply::with(503, "Retry-After", bad)),
            Decision::Retry,
            "{bad:?}"
        );
    }
    assert_eq!(
        decision_for(Reply::with(429, "retry-after-ms", "-1")),
        Decision::Retry
    );
}

#[retryable(max_attempts = 3, base = "10ms", max_delay = "50ms", when = Classify::classify)]
fn fetch_capped(url: &str) -> Result<String, StatusError> {
    get(url)
}

#[retryable(max_attempts = 5, base = "10ms", max_delay = "1h", max_elapsed = "30s",
            when = Classify::classify)]
fn fetch_with_deadline(url: &str) -> Result<String, StatusError> {
    get(url)
}

#[test]
fn hints_stay_within_max_delay_and_max_elapsed() {
    // The server asks for an hour; max_delay is 50 ms.
    let api = FakeApi::start(|_, n| {
        if n < 3 {
            Reply::with(503, "Retry-After", "3600")
        } else {
            Reply::status(200, "late")
        }
    })
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder().observer(recorder.clone()).build();
    let url = format!("{}/capped", api.url());
    assert_eq!(ctx.in_scope(|| fetch_capped(&url)).unwrap(), "late");
    let delays: Vec<u64> = recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::RetryAttempted { delay_ns, .. } => Some(*delay_ns),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [50_000_000, 50_000_000]);

    // An hour's hint would cross a 30 s deadline: give up at once.
    let api = FakeApi::start(|_, _| Reply::with(429, "Retry-After", "3600")).unwrap();
    let clock = VirtualClock::new();
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder()
        .observer(recorder.clone())
        .virtual_time(&clock)
        .build();
    let url = format!("{}/deadline", api.url());
    assert!(ctx.in_scope(|| fetch_with_deadline(&url)).is_err());
    assert_eq!(api.requests.lock().unwrap().len(), 1);
    assert_eq!(recorder.issues()[0].error_code, IssueCode::DeadlineExceeded);
    assert!(clock.slept().is_empty());
}

#[test]
fn ureq_errors_classify_by_kind() {
    // Status errors (ureq's default), without headers.
    let api = FakeApi::start(|path, _| match path {
        "/gone" => Reply::status(404, ""),
        "/busy" => Reply::status(503, ""),
        "/slow" => Reply::Stall,
        _ => Reply::Drop,
    })
    .unwrap();
    let plain: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(300)))
        .build()
        .into();
    let err = |path: &str| {
        plain
            .get(&format!("{}{path}", api.url()))
            .call()
            .unwrap_err()
    };
    assert_eq!(err("/gone").classify(), Decision::Permanent);
    assert_eq!(err("/busy").classify(), Decision::Retry);
    // Before the stall: the one-thread server would keep a later request
    // waiting past the client's time-out.
    let dropped = err("/dropped");
    assert_eq!(dropped.classify(), Decision::Retry, "{dropped}");
    assert_eq!(err("/slow").classify(), Decision::Timeout);
    drop(api);
    // Nobody listens there any more.
    let refused = ureq::get("http://127.0.0.1:9/x").call().unwrap_err();
    assert!(refused.classify().is_transient(), "{refused}");
    let bad = ureq::get("not a url").call().unwrap_err();
    assert_eq!(bad.classify(), Decision::Permanent, "{bad}");
}

#[test]
fn reqwest_errors_classify_by_kind() {
    let api = FakeApi::start(|path, _| match path {
        "/busy" => Reply::status(429, ""),
        "/gone" => Reply::status(404, ""),
        _ => Reply::Stall,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let status_error = |path: &str| {
        rt.block_on(async {
            client
                .get(format!("{}{path}", api.url()))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap_err()
        })
    };
    assert_eq!(status_error("/busy").classify(), Decision::Retry);
    assert_eq!(status_error("/gone").classify(), Decision::Permanent);
    let slow = rt
        .block_on(client.get(format!("{}/slow", api.url())).send())
        .unwrap_err();
    assert_eq!(slow.classify(), Decision::Timeout, "{slow}");
    let refused = rt
        .block_on(client.get("http://127.0.0.1:9/x").send())
        .unwrap_err();
    assert_eq!(refused.classify(), Decision::Retry, "{refused}");
}
