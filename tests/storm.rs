//! The retry-storm simulation has the shape Marc Brooker's article
//! reports: full jitter does the least work, decorrelated finishes sooner
//! with more calls, equal jitter is worse than full, and exponential
//! backoff without jitter is an order of magnitude slower.

use recovery_suite::storm::{Config, Strategy, simulate};

#[test]
fn the_known_shape_holds_from_100_clients_up() {
    let config = Config::default();
    for n in [100, 125, 150, 200] {
        let run = |s| simulate(n, s, &config);
        let (none, exp, full, equal, decor) = (
            run(Strategy::NoBackoff),
            run(Strategy::Exponential),
            run(Strategy::Full),
            run(Strategy::Equal),
            run(Strategy::Decorrelated),
        );
        // Every client succeeds exactly once; retries add the rest.
        for o in [none, exp, full, equal, decor] {
            assert!(o.calls >= u64::from(n));
        }
        assert!(
            full.calls < equal.calls,
            "{n}: full {full:?} vs equal {equal:?}"
        );
        assert!(
            full.calls < decor.calls,
            "{n}: full {full:?} vs decorrelated {decor:?}"
        );
        assert!(
            full.calls * 5 < exp.calls,
            "{n}: full {full:?} vs exponential {exp:?}"
        );
        assert!(
            decor.completion < full.completion,
            "{n}: decorrelated is not sooner"
        );
        assert!(
            equal.completion > full.completion,
            "{n}: equal is not slower"
        );
        assert!(
            exp.completion > full.completion * 10,
            "{n}: exponential is not 10x slower"
        );
        // Without jitter, backing off does not reduce the work at all.
        assert_eq!(exp.calls, none.calls);
    }
}

#[test]
fn the_simulation_is_deterministic_and_seeded() {
    let config = Config::default();
    let a = simulate(100, Strategy::Full, &config);
    assert_eq!(a, simulate(100, Strategy::Full, &config));
    let other = Config {
        seed: 7,
        ..Config::default()
    };
    assert_ne!(a, simulate(100, Strategy::Full, &other));
    // No backoff is deterministic whatever the seed: N(N+1)/2 calls.
    assert_eq!(simulate(100, Strategy::NoBackoff, &other).calls, 5050);
}
