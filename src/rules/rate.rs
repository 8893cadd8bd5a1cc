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
    /// Whether the alarm is currently raised.
    pub active: bool,
}

impl RateState {
    /// A raised alarm with no samples yet, as restored after a restart: it clears only once a
    /// fresh window shows the rise has stopped.
    pub fn raised() -> RateState {
        RateState {
            samples: VecDeque::new(),
            active: true,
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
        let spacing = self.window / MAX_SAMPLES;
        // The newest sample is provisional until it is `spacing` past the one kept before it:
        // replacing it keeps the newest value while bounding how many samples the window holds.
        let n = st.samples.len();
        if n >= 2 && now.saturating_duration_since(st.samples[n - 2].0) < spacing {
            st.samples.pop_back();
        }
        st.samples.push_back((now, value));
        while let Some(&(t, _)) = st.samples.front() {
            if now.saturating_duration_since(t) > self.window {
                st.samples.pop_front();
            } else {
                break;
            }
        }
        // Most polls change nothing: whether the rate is at or above `per_minute` is then all
        // that is needed, and counting the slopes below it says so without finding the median
        // (a selection over 465 slopes at every poll of every watched point). The rate itself
        // is measured only for the change it goes into.
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

    /// Whether [`RateOfRise::rate`] is at or above `per_minute`, from how many slopes lie below
    /// it, exactly as comparing the median would say; `None` where `rate` is `None`.
    ///
    /// With `n` slopes and `m = n / 2`: for odd `n` the median is the `m`-th smallest slope,
    /// at or above the threshold exactly when at most `m` slopes are below it. For even `n` it
    /// is the mean of the `(m-1)`-th and `m`-th: both at or above when fewer than `m` are below
    /// (and their rounded mean then is too, rounding being monotonic), both below when more than
    /// `m` are, and then the mean is at most the greatest slope below, so below too. Exactly `m`
    /// below (the threshold falls between the two), or a slope that is not finite, is measured.
    fn decide(&self, st: &RateState) -> Option<Decision> {
        let at = self.window_times(st)?;
        let threshold = self.per_minute;
        let (mut n, mut below, mut greatest_below) = (0usize, 0usize, f64::NEG_INFINITY);
        for (i, a) in at.iter().enumerate() {
            for b in &at[i + 1..] {
                let Some(slope) = slope(a, b) else { continue };
                if !slope.is_finite() {
                    return Some(Decision::Measure);
                }
                n += 1;
                if slope < threshold {
                    below += 1;
                    greatest_below = greatest_below.max(slope);
                }
            }
        }
        if n == 0 {
            return None;
        }
        let m = n / 2;
        Some(if n % 2 == 1 {
            Decision::Known(below <= m)
        } else if below < m {
            Decision::Known(true)
        } else if below > m && greatest_below.abs() < f64::MAX / 4.0 {
            Decision::Known(false)
        } else {
            Decision::Measure
        })
    }

    /// Each sample's time as nanoseconds since the first, with its value, once the window is
    /// at least half covered and has three samples (fewer could not outvote a single glitch).
    fn window_times(&self, st: &RateState) -> Option<Vec<(u64, f64)>> {
        let (first, last) = (st.samples.front()?, st.samples.back()?);
        if st.samples.len() < 3 || last.0.duration_since(first.0) < self.window / 2 {
            return None;
        }
        // Nanoseconds since the first, so a pair's interval is one subtraction (the same
        // Duration, and so the same slope, as subtracting the Instants).
        Some(
            st.samples
                .iter()
                .map(|&(t, v)| {
                    let ns = t.saturating_duration_since(first.0).as_nanos();
                    (u64::try_from(ns).unwrap_or(u64::MAX), v)
                })
                .collect(),
        )
    }

    /// The robust slope over the window, once the window is at least half covered and has
    /// three samples (fewer could not outvote a single glitch).
    fn rate(&self, st: &RateState) -> Option<f64> {
        let at = self.window_times(st)?;
        let mut slopes = Vec::with_capacity(at.len() * (at.len() - 1) / 2);
        for (i, a) in at.iter().enumerate() {
            for b in &at[i + 1..] {
                slopes.extend(slope(a, b));
            }
        }
        if slopes.is_empty() {
            return None;
        }
        // The median by selection, not a full sort: at every poll of every watched point, a
        // 30 s window at 1 Hz has 465 slopes.
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

/// What counting the slopes below the threshold could tell.
enum Decision {
    /// Whether the rate is at or above the threshold.
    Known(bool),
    /// Too close to call by counting: measure the rate.
    Measure,
}

/// The slope from sample `a` to a later sample `b`, in units per minute; none for samples at
/// the same instant.
fn slope(a: &(u64, f64), b: &(u64, f64)) -> Option<f64> {
    let dt = Duration::from_nanos(b.0.saturating_sub(a.0));
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
            let at = base.window_times(&st).expect("window");
            for (i, a) in at.iter().enumerate() {
                for b in &at[i + 1..] {
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
}
