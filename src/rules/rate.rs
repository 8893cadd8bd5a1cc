//! Rate-of-rise rules: how fast a value climbs, in units per minute, over a time window.
//!
//! A heat detector's rate-of-rise element trips at 8.3 °C/min (UL 521); a cell heading into
//! thermal runaway climbs faster than any charge or ambient change. The rate is the Theil–Sen
//! slope (the median of the slopes between every pair of samples in the window), so one noisy or
//! glitched sample neither raises nor hides the alarm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rules::Severity;

/// A rate-of-rise rule (`rate_of_rise = {...}` in a `[[rules]]` entry), as validated by the
/// config.
#[derive(Debug, Clone, PartialEq)]
pub struct RateOfRise {
    /// `per_minute`: the rise, in the point's units per minute, at or above which the alarm is
    /// raised.
    pub per_minute: f64,
    /// `window`: how far back the rise is measured; a longer window is steadier but slower.
    pub window: Duration,
    /// `severity`: the severity of the alarm raised.
    pub severity: Severity,
}

/// At most this many samples are kept per window; samples closer together than
/// `window / MAX_SAMPLES` are thinned, which keeps the pairwise median cheap at fast polls.
const MAX_SAMPLES: u32 = 32;

/// The samples of one (point, rule) pair.
#[derive(Debug, Clone, Default)]
pub struct RateState {
    samples: VecDeque<(Instant, f64)>,
    /// Where the slopes between the samples lie against the rule's threshold, kept up to date
    /// as samples come and go, so a poll computes the slopes of the samples it adds or drops
    /// only (about 2 × 31), not all 465 pairs.
    tally: Tally,
    /// Whether the alarm is currently raised.
    pub active: bool,
}

impl RateState {
    /// A raised alarm with no samples yet, as restored after a restart: it clears only once a
    /// fresh window shows the rise has stopped.
    pub fn raised() -> RateState {
        RateState {
            active: true,
            ..RateState::default()
        }
    }
}

/// The slopes between every pair of samples, counted against one threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    /// The threshold counted against (a state follows one rule; a different one recounts).
    threshold: f64,
    /// Pairs with a slope (samples at the same instant have none).
    pairs: u32,
    /// Slopes below the threshold.
    below: u32,
    /// Slopes below [`clearly_below`] the threshold: no rounding brings them up to it.
    clearly: u32,
    /// Slopes that are not finite or too large to average safely: the rate is then measured.
    wild: u32,
}

/// Far enough below `threshold` that the rounded mean of two slopes under it stays below it.
fn clearly_below(threshold: f64) -> f64 {
    threshold - (threshold.abs() / 1_048_576.0 + f64::MIN_POSITIVE)
}

impl Tally {
    fn new(threshold: f64) -> Tally {
        Tally {
            threshold,
            ..Tally::default()
        }
    }

    /// Counts (`add`) or uncounts one pair's slope.
    fn count(&mut self, slope: Option<f64>, add: bool) {
        let Some(s) = slope else { return };
        let step = |n: &mut u32| {
            *n = if add {
                n.wrapping_add(1)
            } else {
                n.wrapping_sub(1)
            }
        };
        step(&mut self.pairs);
        if !s.is_finite() || s.abs() >= f64::MAX / 8.0 {
            step(&mut self.wild);
        }
        if s < self.threshold {
            step(&mut self.below);
        }
        if s < clearly_below(self.threshold) {
            step(&mut self.clearly);
        }
    }
}

/// A change of the alarm's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateChange {
    pub active: bool,
    /// The rate measured, units per minute.
    pub per_minute: f64,
}

impl RateOfRise {
    /// Feeds one good reading; returns a change of the alarm state, if any.
    pub fn evaluate(&self, st: &mut RateState, value: f64, now: Instant) -> Option<RateChange> {
        if st.tally.threshold.to_bits() != self.per_minute.to_bits() {
            st.tally = recount(&st.samples, self.per_minute);
        }
        let spacing = self.window / MAX_SAMPLES;
        // The newest sample is provisional until it is `spacing` past the one kept before it:
        // replacing it keeps the newest value while bounding how many samples the window holds.
        let n = st.samples.len();
        if n >= 2 && now.saturating_duration_since(st.samples[n - 2].0) < spacing {
            tally_pairs_of(st, n - 1, false);
            st.samples.pop_back();
        }
        st.samples.push_back((now, value));
        tally_pairs_of(st, st.samples.len() - 1, true);
        while let Some(&(t, _)) = st.samples.front() {
            if now.saturating_duration_since(t) > self.window {
                tally_pairs_of(st, 0, false);
                st.samples.pop_front();
            } else {
                break;
            }
        }
        // Most polls change nothing: whether the rate is at or above `per_minute` is then all
        // that is needed, and the tally says so without finding the median of 465 slopes at
        // every poll of every watched point. The rate itself is measured only for the change
        // it goes into.
        let active = match self.decide(st)? {
            Decision::Known(active) => active,
            Decision::Measure => self.rate(st)? >= self.per_minute,
        };
        if active == st.active {
            return None;
        }
        let rate = self.rate(st)?;
        st.active = active;
        Some(RateChange {
            active,
            per_minute: rate,
        })
    }

    /// Whether the window is measured yet: at least half covered, with three samples (fewer
    /// could not outvote a single glitch).
    fn measured(&self, st: &RateState) -> bool {
        match (st.samples.front(), st.samples.back()) {
            (Some(first), Some(last)) => {
                st.samples.len() >= 3 && last.0.duration_since(first.0) >= self.window / 2
            }
            _ => false,
        }
    }

    /// Whether [`RateOfRise::rate`] is at or above `per_minute`, from the tally, exactly as
    /// comparing the median would say; `None` where `rate` is `None`.
    ///
    /// With `n` slopes and `m = n / 2`: for odd `n` the median is the `m`-th smallest slope,
    /// at or above the threshold exactly when at most `m` slopes are below it. For even `n` it
    /// is the mean of the `(m-1)`-th and `m`-th: both at or above when fewer than `m` are below
    /// (and their rounded mean then is too, rounding being monotonic); both clearly below when
    /// more than `m` are clearly below, and then so is their mean. Anything else (the threshold
    /// between or right beside the two, a slope that is not finite) is measured.
    fn decide(&self, st: &RateState) -> Option<Decision> {
        if !self.measured(st) {
            return None;
        }
        let t = st.tally;
        if t.pairs == 0 {
            return None;
        }
        if t.wild > 0 || self.per_minute.abs() >= f64::MAX / 8.0 {
            return Some(Decision::Measure);
        }
        let m = t.pairs / 2;
        Some(if t.pairs % 2 == 1 {
            Decision::Known(t.below <= m)
        } else if t.below < m {
            Decision::Known(true)
        } else if t.clearly > m {
            Decision::Known(false)
        } else {
            Decision::Measure
        })
    }

    /// The robust slope over the window, once it is measured (see [`RateOfRise::measured`]).
    fn rate(&self, st: &RateState) -> Option<f64> {
        if !self.measured(st) {
            return None;
        }
        let n = st.samples.len();
        let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
        for (i, a) in st.samples.iter().enumerate() {
            for b in st.samples.iter().skip(i + 1) {
                slopes.extend(slope(a, b));
            }
        }
        if slopes.is_empty() {
            return None;
        }
        // The median by selection, not a full sort.
        let m = slopes.len() / 2;
        let even = slopes.len() % 2 == 0;
        let (below, mid, _) = slopes.select_nth_unstable_by(m, |a, b| a.total_cmp(b));
        let mid = *mid;
        // With an even count the median is the mean of the two middle slopes: the one below
        // `mid` in sorted order is the greatest of those before it.
        let lower = below.iter().copied().max_by(|a, b| a.total_cmp(b));
        Some(match lower {
            Some(lower) if even => (lower + mid) / 2.0,
            _ => mid,
        })
    }
}

/// Counts (`add`) or uncounts the slopes between sample `k` and every other sample.
fn tally_pairs_of(st: &mut RateState, k: usize, add: bool) {
    let Some(&pivot) = st.samples.get(k) else {
        return;
    };
    for (i, other) in st.samples.iter().enumerate() {
        let s = match i.cmp(&k) {
            std::cmp::Ordering::Less => slope(other, &pivot),
            std::cmp::Ordering::Greater => slope(&pivot, other),
            std::cmp::Ordering::Equal => continue,
        };
        st.tally.count(s, add);
    }
}

/// The tally of every pair of `samples` against `threshold`, from scratch.
fn recount(samples: &VecDeque<(Instant, f64)>, threshold: f64) -> Tally {
    let mut t = Tally::new(threshold);
    for (i, a) in samples.iter().enumerate() {
        for b in samples.iter().skip(i + 1) {
            t.count(slope(a, b), true);
        }
    }
    t
}

/// What the tally could tell.
enum Decision {
    /// Whether the rate is at or above the threshold.
    Known(bool),
    /// Too close to call by counting: measure the rate.
    Measure,
}

/// The slope from sample `a` to a later sample `b`, in units per minute; none for samples at
/// the same instant.
fn slope(a: &(Instant, f64), b: &(Instant, f64)) -> Option<f64> {
    let dt = b.0.saturating_duration_since(a.0);
    (dt > Duration::ZERO).then(|| (b.1 - a.1) / dt.as_secs_f64() * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Severity;

    fn rule() -> RateOfRise {
        RateOfRise {
            per_minute: 8.3,
            window: Duration::from_secs(30),
            severity: Severity::Critical,
        }
    }

    /// Plays one sample per second from `values`; returns the state after each.
    fn play(values: &[f64]) -> Vec<bool> {
        let r = rule();
        let t0 = Instant::now();
        let mut st = RateState::default();
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                r.evaluate(&mut st, v, t0 + Duration::from_secs(i as u64));
                st.active
            })
            .collect()
    }

    #[test]
    fn steady_climb_past_the_rate_raises_after_half_a_window() {
        // 0.2 °C/s = 12 °C/min.
        let v: Vec<f64> = (0..40).map(|i| 25.0 + 0.2 * i as f64).collect();
        let s = play(&v);
        assert!(!s[14], "window not yet half covered");
        assert!(s[15] && s[39]);
    }

    #[test]
    fn fast_polls_are_thinned_but_still_measured() {
        let r = rule();
        let t0 = Instant::now();
        let mut st = RateState::default();
        let mut raised_at = None;
        // 100 ms polls, 0.2 °C/s = 12 °C/min.
        for i in 0..400u64 {
            let now = t0 + Duration::from_millis(100 * i);
            r.evaluate(&mut st, 25.0 + 0.02 * i as f64, now);
            if st.active && raised_at.is_none() {
                raised_at = Some(i);
            }
            assert!(
                st.samples.len() <= 2 * MAX_SAMPLES as usize,
                "{}",
                st.samples.len()
            );
        }
        assert_eq!(raised_at, Some(150), "half a 30 s window");
    }

    #[test]
    fn a_slow_climb_does_not_raise() {
        // 0.1 °C/s = 6 °C/min, below 8.3.
        let v: Vec<f64> = (0..60).map(|i| 25.0 + 0.1 * i as f64).collect();
        assert!(play(&v).iter().all(|a| !a));
    }

    #[test]
    fn one_glitched_sample_neither_raises_nor_clears() {
        let mut flat: Vec<f64> = vec![25.0; 40];
        flat[30] = 90.0;
        assert!(play(&flat).iter().all(|a| !a), "a spike is not a rise");
        let mut climb: Vec<f64> = (0..40).map(|i| 25.0 + 0.3 * i as f64).collect();
        climb[35] = 0.0;
        let s = play(&climb);
        assert!(s[34] && s[35] && s[36], "a dropout does not clear");
    }

    #[test]
    fn clears_when_the_value_levels_off() {
        let mut v: Vec<f64> = (0..30).map(|i| 25.0 + 0.3 * i as f64).collect();
        v.extend(std::iter::repeat_n(33.7, 40));
        let s = play(&v);
        assert!(s[29]);
        assert!(!s[69]);
    }

    /// The median by selection is the sorted median the rule was written with, to the bit, for
    /// odd and even numbers of slopes, noisy values and uneven spacing.
    #[test]
    fn the_median_by_selection_is_the_sorted_median() {
        fn sorted_median(st: &RateState) -> Option<f64> {
            let mut slopes = Vec::new();
            for (i, a) in st.samples.iter().enumerate() {
                for b in st.samples.iter().skip(i + 1) {
                    let dt = b.0.duration_since(a.0);
                    if dt > Duration::ZERO {
                        slopes.push((b.1 - a.1) / dt.as_secs_f64() * 60.0);
                    }
                }
            }
            slopes.sort_by(|a, b| a.total_cmp(b));
            let m = slopes.len() / 2;
            Some(if slopes.len() % 2 == 0 {
                (slopes[m - 1] + slopes[m]) / 2.0
            } else {
                slopes[m]
            })
        }
        let r = rule();
        let t0 = Instant::now();
        let mut seed = 7u64;
        let mut compared = 0;
        for n in 3..60usize {
            let mut st = RateState::default();
            let mut t = t0;
            for i in 0..n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (seed >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
                t += Duration::from_millis(700 + (seed >> 54));
                st.samples.push_back((t, 25.0 + 0.1 * i as f64 + noise));
            }
            let got = r.rate(&st);
            // The rule asks for half a window covered first; the reference does not.
            if got.is_some() {
                compared += 1;
                assert_eq!(
                    got.map(f64::to_bits),
                    sorted_median(&st).map(f64::to_bits),
                    "{n} samples"
                );
            }
        }
        assert!(compared > 30, "only {compared} windows compared");
    }

    /// Counting the slopes below the threshold decides as comparing the median does, for
    /// thresholds right at, just beside and between the slopes, where it could go wrong.
    #[test]
    fn counting_decides_as_the_median_does_at_every_threshold() {
        let t0 = Instant::now();
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let (mut decided, mut measured) = (0, 0);
        for n in 3..40usize {
            let mut st = RateState::default();
            let mut t = t0;
            for i in 0..n {
                let noise = (next() >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
                // Repeated values and a flat run now and then: equal slopes, zero slopes.
                let v = if i % 5 == 0 {
                    25.0
                } else {
                    25.0 + 0.1 * i as f64 + noise
                };
                t += Duration::from_millis(700 + (next() >> 54));
                st.samples.push_back((t, v));
            }
            let base = rule();
            let Some(rate) = base.rate(&st) else { continue };
            let mut thresholds = vec![rate, rate.next_up(), rate.next_down(), 0.0, -1.0, 1e9];
            for (i, a) in st.samples.iter().enumerate() {
                for b in st.samples.iter().skip(i + 1) {
                    if let Some(s) = slope(a, b) {
                        thresholds.extend([s, s.next_up(), s.next_down()]);
                    }
                }
            }
            for per_minute in thresholds {
                let r = RateOfRise {
                    per_minute,
                    ..rule()
                };
                st.tally = recount(&st.samples, per_minute);
                let want = r.rate(&st).expect("rate") >= per_minute;
                match r.decide(&st).expect("a window") {
                    Decision::Known(got) => {
                        decided += 1;
                        assert_eq!(
                            got, want,
                            "{n} samples, threshold {per_minute}, rate {rate}"
                        );
                    }
                    Decision::Measure => measured += 1,
                }
            }
        }
        assert!(
            decided > 1000 && measured > 0,
            "{decided} decided, {measured} measured"
        );
    }

    /// The tally kept as samples come (some thinned away) and leave the window is the tally
    /// counted from scratch, and the alarm follows the median's comparison at every reading.
    #[test]
    fn the_running_tally_is_the_tally_from_scratch_at_every_reading() {
        let t0 = Instant::now();
        let mut seed = 5u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let mut raised = 0;
        for per_minute in [0.0, 2.0, 8.3, 20.0] {
            let r = RateOfRise {
                per_minute,
                ..rule()
            };
            let mut st = RateState::default();
            let mut t = t0;
            let mut v = 25.0;
            for i in 0..400u32 {
                // Fast polls (thinned), 1 s polls and gaps longer than the window; climbs,
                // falls and a flat stretch.
                t += Duration::from_millis(match i % 97 {
                    0 => 31_000,
                    k if k < 40 => 200 + (next() >> 57),
                    _ => 1_000,
                });
                v += match (i / 50) % 4 {
                    0 => 0.3,
                    1 => -0.2,
                    2 => 0.0,
                    _ => ((next() >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 2.0,
                };
                let before = st.active;
                let change = r.evaluate(&mut st, v, t);
                assert_eq!(st.tally, recount(&st.samples, per_minute), "reading {i}");
                let want = r.rate(&st).map(|rate| rate >= per_minute);
                match want {
                    Some(want) => assert_eq!(st.active, want, "reading {i} at {per_minute}"),
                    None => assert_eq!(st.active, before, "reading {i}: unmeasured"),
                }
                if let Some(c) = change {
                    assert_eq!(c.active, st.active);
                    assert_eq!(Some(c.per_minute), r.rate(&st));
                    raised += u32::from(c.active);
                }
            }
        }
        assert!(raised >= 4, "the alarm was raised {raised} times");
    }
}
