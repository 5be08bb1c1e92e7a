//! Backoff schedules: how long to wait before each retry.
//!
//! A [`Backoff`] is a small `Copy` value built by `const fn`s, so a policy can
//! live in a `const` and nothing is parsed or built at run time. Its
//! [`Schedule`] is an `Iterator<Item = Duration>` of the delays before retry
//! 1, 2, 3, ...: the first is `base`, each next one `multiplier` times the
//! last, none above `max_delay`. Jitter is applied before the cap, so no delay
//! ever exceeds `max_delay` (backon's known fault is the other order).

use std::time::Duration;

use rand_core::Rng;
use rand_pcg::Pcg64Mcg;

/// How randomness spreads the delays of many clients apart.
///
/// With `d` the exponential delay of this retry (already capped at
/// `max_delay`):
///
/// | kind | delay |
/// |---|---|
/// | `None` | `d` |
/// | `Full` | uniform in `[0, d]` |
/// | `Equal` | `d/2` + uniform in `[0, d/2]` |
/// | `Decorrelated` | `min(max_delay, uniform in [base, 3 × previous delay])` |
///
/// Full jitter does the least total work under contention; see Marc Brooker,
/// "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// No randomness: every client waits exactly the exponential delay.
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Half the delay fixed, half uniform: `d/2 + uniform[0, d/2]`.
    Equal,
    /// Each delay drawn from `[base, 3 × previous]`, capped; ignores `multiplier`.
    Decorrelated,
}

/// The default first delay: 100 ms.
pub use recovery_rules::DEFAULT_BASE;
/// The default growth factor per retry: 2.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// The default cap on a single delay: 30 s (or `base`, if that is larger).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

/// An exponential backoff schedule with an optional jitter.
///
/// ```
/// use std::time::Duration;
/// use recovery::{Backoff, Jitter};
///
/// const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200))
///     .multiplier(3.0)
///     .max_delay(Duration::from_secs(2))
///     .jitter(Jitter::None);
///
/// let delays: Vec<Duration> = BACKOFF.schedule(0).take(4).collect();
/// assert_eq!(delays, [
///     Duration::from_millis(200),
///     Duration::from_millis(600),
///     Duration::from_millis(1800),
///     Duration::from_secs(2), // capped
/// ]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE)
    }
}

impl Backoff {
    /// A schedule whose first delay is `base`, doubling per retry, capped at
    /// 30 s (or at `base` if that is larger), without jitter.
    pub const fn new(base: Duration) -> Self {
        let max_delay = if base.as_nanos() > DEFAULT_MAX_DELAY.as_nanos() {
            base
        } else {
            DEFAULT_MAX_DELAY
        };
        Self {
            base,
            multiplier: DEFAULT_MULTIPLIER,
            max_delay,
            jitter: Jitter::None,
        }
    }

    /// Sets the growth factor per retry.
    ///
    /// # Panics
    /// When `multiplier` is below 1 or not finite; in a `const` this is a
    /// compile error, and `#[retryable]` checks it before expanding.
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        assert!(
            multiplier.is_finite() && multiplier >= 1.0,
            "Backoff::multiplier must be finite and at least 1"
        );
        self.multiplier = multiplier;
        self
    }

    /// Caps every delay, jitter and retry-after hints included.
    ///
    /// # Panics
    /// When `max_delay` is below `base`: no delay could then reach `base`.
    pub const fn max_delay(mut self, max_delay: Duration) -> Self {
        assert!(
            max_delay.as_nanos() >= self.base.as_nanos(),
            "Backoff::max_delay must be at least base"
        );
        self.max_delay = max_delay;
        self
    }

    /// Sets the jitter kind.
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The growth factor per retry.
    pub const fn growth(&self) -> f64 {
        self.multiplier
    }

    /// The cap on any single delay.
    pub const fn cap(&self) -> Duration {
        self.max_delay
    }

    /// The jitter kind.
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The delays before retry 1, 2, 3, ... as an endless iterator. `seed`
    /// seeds the jitter: the same seed gives the same delays, bit for bit, on
    /// every platform. Without jitter the seed is ignored.
    pub fn schedule(self, seed: u64) -> Schedule {
        Schedule::new(self, seed)
    }
}

/// The delays of one [`Backoff`], in order; see [`Backoff::schedule`].
#[derive(Clone, Debug)]
pub struct Schedule {
    backoff: Backoff,
    /// The exponential delay of the next retry, before jitter, in nanoseconds.
    /// Kept as a float and multiplied step by step, which is exact IEEE
    /// arithmetic and so identical on every platform (unlike `powi`).
    nominal_ns: f64,
    /// The delay last returned, for decorrelated jitter.
    previous: Duration,
    seed: u64,
    /// Created on the first jittered delay only.
    rng: Option<Pcg64Mcg>,
}

impl Schedule {
    fn new(backoff: Backoff, seed: u64) -> Self {
        Self {
            backoff,
            nominal_ns: backoff.base.as_nanos() as f64,
            previous: backoff.base,
            seed,
            rng: None,
        }
    }

    /// The next delay, at least `hint` (a server's retry-after) when one is
    /// given, and never above `max_delay`.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let cap = self.backoff.max_delay;
        let cap_ns = cap.as_nanos() as f64;
        let nominal = self.nominal_ns.min(cap_ns);
        self.nominal_ns = (self.nominal_ns * self.backoff.multiplier).min(cap_ns);

        let jittered_ns = match self.backoff.jitter {
            Jitter::None => nominal,
            Jitter::Full => self.uniform() * nominal,
            Jitter::Equal => nominal / 2.0 + self.uniform() * (nominal / 2.0),
            Jitter::Decorrelated => {
                let low = self.backoff.base.as_nanos() as f64;
                let high = (self.previous.as_nanos() as f64 * 3.0).max(low);
                low + self.uniform() * (high - low)
            }
        };
        // The cap comes after the jitter: nothing may exceed it.
        let mut delay = nanos(jittered_ns).min(cap);
        if let Some(hint) = hint {
            delay = delay.max(hint.min(cap));
        }
        self.previous = delay;
        delay
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    fn uniform(&mut self) -> f64 {
        let seed = self.seed;
        let rng = self.rng.get_or_insert_with(|| Pcg64Mcg::new(spread(seed)));
        (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay(None))
    }
}

/// Whole nanoseconds of a non-negative float, saturating.
fn nanos(ns: f64) -> Duration {
    if ns >= u64::MAX as f64 {
        Duration::from_nanos(u64::MAX)
    } else {
        Duration::from_nanos(ns.max(0.0) as u64)
    }
}

/// Widens a 64-bit seed to the generator's 128-bit state (SplitMix64 twice),
/// so that nearby seeds give unrelated sequences.
fn spread(seed: u64) -> u128 {
    let a = splitmix(seed);
    let b = splitmix(a);
    (u128::from(a) << 64) | u128::from(b)
}

/// One SplitMix64 step: a fast, well-mixed hash of a 64-bit value.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn delays(backoff: Backoff, seed: u64, n: usize) -> Vec<Duration> {
        backoff.schedule(seed).take(n).collect()
    }

    #[test]
    fn grows_exponentially_from_base_and_stops_at_the_cap() {
        let b = Backoff::new(100 * MS).max_delay(1000 * MS);
        assert_eq!(
            delays(b, 0, 6),
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn multiplier_one_keeps_the_delay_constant() {
        let b = Backoff::new(50 * MS).multiplier(1.0);
        assert!(delays(b, 0, 10).iter().all(|d| *d == 50 * MS));
    }

    #[test]
    fn fractional_multiplier_is_applied_per_step() {
        let b = Backoff::new(100 * MS).multiplier(1.5);
        assert_eq!(delays(b, 0, 3), [100 * MS, 150 * MS, 225 * MS]);
    }

    #[test]
    fn a_base_above_the_default_cap_raises_the_cap() {
        let b = Backoff::new(Duration::from_secs(60));
        assert_eq!(b.cap(), Duration::from_secs(60));
        assert_eq!(delays(b, 0, 2), [Duration::from_secs(60); 2]);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_nominal_delay() {
        let b = Backoff::new(100 * MS)
            .max_delay(800 * MS)
            .jitter(Jitter::Full);
        let plain = delays(b.jitter(Jitter::None), 0, 50);
        for seed in 0..50 {
            let jittered = delays(b, seed, 50);
            for (j, p) in jittered.iter().zip(&plain) {
                assert!(j <= p, "{j:?} above nominal {p:?}");
            }
        }
        // And it really varies.
        assert_ne!(delays(b, 1, 5), delays(b, 2, 5));
    }

    #[test]
    fn equal_jitter_keeps_at_least_half_the_delay() {
        let b = Backoff::new(100 * MS)
            .max_delay(800 * MS)
            .jitter(Jitter::Equal);
        let plain = delays(b.jitter(Jitter::None), 0, 20);
        for seed in 0..50 {
            for (j, p) in delays(b, seed, 20).iter().zip(&plain) {
                assert!(
                    *j >= *p / 2 && j <= p,
                    "{j:?} outside [{:?}, {p:?}]",
                    *p / 2
                );
            }
        }
    }

    #[test]
    fn decorrelated_jitter_stays_between_base_and_three_times_the_previous() {
        let b = Backoff::new(100 * MS)
            .max_delay(5000 * MS)
            .jitter(Jitter::Decorrelated);
        for seed in 0..50 {
            let mut previous = 100 * MS;
            for d in delays(b, seed, 30) {
                assert!(d >= 100 * MS, "{d:?} below base");
                assert!(
                    d <= (previous * 3).min(5000 * MS),
                    "{d:?} above 3x {previous:?}"
                );
                previous = d;
            }
        }
    }

    #[test]
    fn decorrelated_jitter_is_capped_after_drawing() {
        let b = Backoff::new(100 * MS)
            .max_delay(150 * MS)
            .jitter(Jitter::Decorrelated);
        let all = delays(b, 7, 200);
        assert!(all.iter().all(|d| *d <= 150 * MS));
        assert!(all.contains(&(150 * MS)), "the cap is reached");
    }

    #[test]
    fn same_seed_same_delays_bit_for_bit() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let b = Backoff::new(10 * MS).jitter(jitter);
            assert_eq!(delays(b, 42, 40), delays(b, 42, 40));
            assert_ne!(delays(b, 42, 40), delays(b, 43, 40));
        }
    }

    #[test]
    fn hint_is_a_lower_bound_but_never_beats_the_cap() {
        let b = Backoff::new(100 * MS).max_delay(2000 * MS);
        let mut s = b.schedule(0);
        assert_eq!(s.next_delay(Some(700 * MS)), 700 * MS);
        assert_eq!(s.next_delay(Some(10 * MS)), 200 * MS);
        assert_eq!(s.next_delay(Some(Duration::from_secs(3600))), 2000 * MS);
    }

    #[test]
    fn huge_multipliers_saturate_instead_of_overflowing() {
        let b = Backoff::new(Duration::from_secs(1))
            .multiplier(1e300)
            .max_delay(Duration::MAX);
        let d = delays(b, 0, 4);
        assert_eq!(d[0], Duration::from_secs(1));
        assert_eq!(d[3], Duration::from_nanos(u64::MAX));
    }

    #[test]
    #[should_panic(expected = "at least 1")]
    fn multiplier_below_one_is_refused() {
        let _ = Backoff::new(MS).multiplier(0.5);
    }

    #[test]
    #[should_panic(expected = "at least base")]
    fn max_delay_below_base_is_refused() {
        let _ = Backoff::new(10 * MS).max_delay(MS);
    }
}
