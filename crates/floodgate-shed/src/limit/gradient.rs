//! [`Gradient`]: a latency gradient against a probed minimum round-trip time.

use std::hash::BuildHasher;
use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

use super::{LimitAlgorithm, Outcome, Sample, check_bounds, percentile};
use crate::ConfigError;

/// A window closes only once it holds this many samples: a percentile of fewer is noise.
const MIN_WINDOW_SAMPLES: usize = 10;
/// Windows in a row with the limit at the probe level before the minimum RTT is measured
/// again (Envoy, PR #10647): a limit that low makes probing free, and it usually means the
/// service got slower for good, so the old minimum is stale.
const FLOOR_WINDOWS_BEFORE_PROBE: u32 = 5;
/// The gradient's range per window, as Envoy clamps it.
const GRADIENT_MIN: f64 = 0.5;
const GRADIENT_MAX: f64 = 2.0;
/// The largest settings [`GradientBuilder::build`] accepts: beyond them the algorithm
/// would not adapt in any useful time, and durations near `Duration::MAX` overflow an
/// `Instant`.
const MAX_BUFFER: f64 = 10.0;
const MAX_WINDOW: Duration = Duration::from_secs(60);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest probe deadline [`GradientBuilder::probe_deadline_windows`] accepts, in
/// windows: with windows of at most 60 s, a deadline stays within 100 minutes.
const MAX_PROBE_DEADLINE_WINDOWS: u32 = 100;

/// `duration · factor`, saturating at `Duration::MAX` instead of panicking.
fn scaled(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// Keeps latency within a buffer above the service's latency when almost idle, which it
/// measures itself: Envoy's adaptive-concurrency gradient controller.
///
/// # How it works
///
/// - **Minimum RTT.** When the layer starts, and every
///   [`probe_interval`](GradientBuilder::probe_interval) (60 s) plus a random 0–15 %
///   [jitter](GradientBuilder::probe_jitter) so replicas do not probe together, the limit is
///   pinned to `min(L, probe_limit)` (3) until
///   [`probe_samples`](GradientBuilder::probe_samples) (50) requests that *started during
///   the probe* succeed. Their [`percentile`](GradientBuilder::percentile) (p90) is the
///   minimum RTT; then the limit goes back to what it was. A probe also starts after 5
///   windows in a row at the probe level, where it costs nothing.
/// - **Probe deadline.** Only successes count, so a probe could wait for ever on a backend
///   that fails everything or clients that hang up. It ends anyway at the first sample
///   (of any outcome) that ends [`probe_deadline_windows`](GradientBuilder::probe_deadline_windows)
///   (10) windows after it started (1 s by default), and the limit goes back to what it
///   was. The successes it got replace the minimum RTT if there are at least
///   `min(probe_samples, 10)` of them, or at least 1 when there is no minimum yet;
///   otherwise the previous minimum is kept. Either way the next scheduled probe is
///   `probe_interval` plus jitter after this one ended, never at once. Without any minimum
///   (a first probe with no success) the limit stays where it is until that next probe.
/// - **Windows.** Between probes, samples gather in windows of
///   [`window`](GradientBuilder::window) (100 ms, and at least 10 samples). When one
///   closes, with `sampleRTT` the window's p90 latency:
///
///   `g = clamp(minRTT · (1 + buffer) / sampleRTT, 0.5, 2.0)`, then
///   `L' = clamp(⌊L·g + √(L·g)⌋, min, max)`, `buffer` 0.25.
///
///   So one window changes the limit by a factor between about 0.5 and 2, and the `√`
///   headroom keeps a little room to discover more capacity.
/// - **Drops** ([`Outcome::Dropped`]: a 5xx, 429 or failure from below) enter the window as
///   latency `max(latency, 2·(1 + buffer)·minRTT)`, slow enough for the smallest gradient:
///   fast 503s from below must not look like a fast service (Netflix issue #176), and more
///   than 10 % drops in a window halve the limit. [`Outcome::Ignored`] samples are skipped.
/// - **Idle.** While the window's highest `in_flight` is under `L/2`, the limit does not
///   grow: a lightly used limit says nothing about more load (Netflix's app-limited rule).
///   Without it the limit of an idle service would climb to `max` and admit a burst far
///   beyond capacity when traffic returns.
///
/// # What it converges to
///
/// For a saturated service that runs `N` requests at a time, each taking `S`, latency at
/// limit `L > N` is about `S·L/N` and the fixed point of the update is
/// `L* = 1.25·N + √(1.25·N)`: latency settles at `1.25 + √(1.25/N)` times the idle latency
/// (1.65× for `N = 8`, 1.36× for `N = 100`). When capacity halves or the service slows,
/// `sampleRTT` rises at once and the limit follows within a few windows; a lasting slowdown
/// brings the limit to the probe level, which triggers a new probe that learns the new
/// minimum.
///
/// A probe refuses or queues most traffic beyond 3 in flight while it lasts (50 requests:
/// 0.2 s for a service taking 10 ms; whatever the backend answers, no longer than the
/// first sample that ends after 10 windows, 1 s). That is the price of a baseline that cannot drift.
///
/// # Why not Netflix's Gradient2
///
/// Gradient2 compares the latency of each window with a long-term average of latency.
/// Under sustained overload that average is learnt from already inflated latencies, so the
/// limit drifts up (its `+queueSize` term grows it without bound once the gradient is near
/// 0.8, PR #134; constant timeouts give a zero gradient and the limit rises to max, issue
/// #137); in a model run it settled at 41 for a service of 8 slots. A minimum measured at a
/// concurrency too low to queue cannot learn from the overload it should prevent, and it is
/// what Envoy ships.
///
/// ```
/// use floodgate_shed::{ConcurrencyLimitLayer, Gradient};
/// use std::time::Duration;
///
/// let gradient = Gradient::builder()
///     .buffer(0.5)
///     .window(Duration::from_millis(250))
///     .min_limit(2)
///     .max_limit(256)
///     .build()?;
/// let layer = ConcurrencyLimitLayer::builder(16).adaptive(gradient).build()?;
/// # let _ = layer;
/// # Ok::<(), floodgate_shed::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gradient {
    buffer: f64,
    percentile: f64,
    window: Duration,
    probe_interval: Duration,
    probe_jitter: f64,
    probe_limit: usize,
    probe_samples: usize,
    probe_deadline_windows: u32,
    min: usize,
    max: usize,
    state: State,
}

#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    min_rtt: Option<Duration>,
    /// The latencies of the current window, and when it began.
    latencies: Vec<Duration>,
    window_start: Option<Instant>,
    window_in_flight: usize,
    windows_at_floor: u32,
    next_probe: Option<Instant>,
    random: u64,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Measuring the minimum RTT with the limit pinned, from requests started at `since`,
    /// until enough succeed or a sample ends at `deadline`.
    Probing {
        since: Option<Instant>,
        deadline: Option<Instant>,
        restore: usize,
    },
    Tracking,
}

impl Gradient {
    /// The gradient with the default settings.
    pub fn new() -> Self {
        Self {
            buffer: 0.25,
            percentile: 0.9,
            window: Duration::from_millis(100),
            probe_interval: Duration::from_secs(60),
            probe_jitter: 0.15,
            probe_limit: 3,
            probe_samples: 50,
            probe_deadline_windows: 10,
            min: 1,
            max: 1000,
            state: State {
                phase: Phase::Probing {
                    since: None,
                    deadline: None,
                    restore: 1,
                },
                min_rtt: None,
                latencies: Vec::new(),
                window_start: None,
                window_in_flight: 0,
                windows_at_floor: 0,
                next_probe: None,
                random: std::collections::hash_map::RandomState::new().hash_one(0_u8),
            },
        }
    }

    /// Starts from the defaults.
    pub fn builder() -> GradientBuilder {
        GradientBuilder {
            gradient: Self::new(),
        }
    }

    /// The minimum RTT last measured, once a probe has finished.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.state.min_rtt
    }

    /// The limit while probing, given the limit before.
    fn probe_level(&self, limit: usize) -> usize {
        limit.min(self.probe_limit).clamp(self.min, self.max)
    }

    fn begin_probe(&mut self, now: Instant, limit: usize) -> usize {
        tracing::debug!(target: "floodgate::shed", limit, "measuring the minimum latency");
        // Checked: a time past what an `Instant` holds is never (not with valid settings).
        let deadline = now.checked_add(self.window.saturating_mul(self.probe_deadline_windows));
        self.state.phase = Phase::Probing {
            since: Some(now),
            deadline,
            restore: limit,
        };
        self.state.latencies.clear();
        self.state.windows_at_floor = 0;
        self.probe_level(limit)
    }

    /// A random share in [0, 1), from splitmix64.
    fn random_share(&mut self) -> f64 {
        self.state.random = self.state.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        #[allow(
            clippy::cast_precision_loss,
            reason = "53 random bits make an exact f64 in [0, 1)"
        )]
        let share = (z >> 11) as f64 / (1_u64 << 53) as f64;
        share
    }

    fn probe(&mut self, sample: &Sample, limit: usize) -> usize {
        let Phase::Probing {
            since,
            deadline,
            restore,
        } = self.state.phase
        else {
            return limit;
        };
        let now = sample.ended();
        // Requests admitted before the probe ran at the old limit, so they queued as much
        // as before (Envoy PR #11579: counting them made the minimum climb under load).
        let counts =
            sample.outcome == Outcome::Success && since.is_none_or(|since| sample.started >= since);
        if counts {
            self.state.latencies.push(sample.latency);
            if self.state.latencies.len() >= self.probe_samples {
                return self.end_probe(now, restore);
            }
        }
        if deadline.is_some_and(|deadline| now >= deadline) {
            return self.end_probe(now, restore);
        }
        self.probe_level(restore)
    }

    /// Ends the probe at `now`, complete or at its deadline: the minimum RTT is replaced if
    /// the probe has enough successes, and the limit goes back to `restore`.
    fn end_probe(&mut self, now: Instant, restore: usize) -> usize {
        let measured = self.state.latencies.len();
        let enough = self.probe_samples.min(MIN_WINDOW_SAMPLES);
        // Too few successes keep the previous minimum; any beat having none.
        if (measured >= enough || self.state.min_rtt.is_none())
            && let Some(min_rtt) = percentile(&mut self.state.latencies, self.percentile)
        {
            self.state.min_rtt = Some(min_rtt);
        }
        if measured < self.probe_samples {
            tracing::debug!(
                target: "floodgate::shed",
                measured,
                wanted = self.probe_samples,
                min_rtt = ?self.state.min_rtt,
                limit = restore,
                "probe deadline reached"
            );
        } else {
            tracing::debug!(target: "floodgate::shed", min_rtt = ?self.state.min_rtt, limit = restore, "minimum latency measured");
        }
        self.state.latencies.clear();
        self.state.phase = Phase::Tracking;
        self.state.window_start = None;
        let jitter = scaled(self.probe_interval, self.probe_jitter * self.random_share());
        // Checked: a time past what an `Instant` holds is never.
        self.state.next_probe = now
            .checked_add(self.probe_interval)
            .and_then(|next| next.checked_add(jitter));
        restore
    }
}

impl Default for Gradient {
    fn default() -> Self {
        Self::new()
    }
}

impl LimitAlgorithm for Gradient {
    fn bounds(&self) -> RangeInclusive<usize> {
        self.min..=self.max
    }

    fn start(&mut self, now: Instant, initial: usize) -> usize {
        self.begin_probe(now, initial)
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        // Every sample, ignored ones included, may end a probe at its deadline.
        if matches!(self.state.phase, Phase::Probing { .. }) {
            return self.probe(sample, limit);
        }
        if sample.outcome == Outcome::Ignored {
            return limit;
        }
        let now = sample.ended();
        if self.state.next_probe.is_some_and(|next| now >= next) {
            return self.begin_probe(now, limit);
        }
        // No minimum yet (the probes so far saw no success): nothing to compare with.
        let Some(min_rtt) = self.state.min_rtt else {
            return limit;
        };
        let target = scaled(min_rtt, 1.0 + self.buffer);
        let latency = match sample.outcome {
            Outcome::Dropped => sample.latency.max(target.saturating_mul(2)),
            _ => sample.latency,
        };
        let window_start = *self.state.window_start.get_or_insert(now);
        self.state.latencies.push(latency);
        self.state.window_in_flight = self.state.window_in_flight.max(sample.in_flight);
        let window_over = window_start
            .checked_add(self.window)
            .is_some_and(|end| now >= end);
        if !window_over || self.state.latencies.len() < MIN_WINDOW_SAMPLES {
            return limit;
        }
        let sample_rtt = percentile(&mut self.state.latencies, self.percentile).unwrap_or(target);
        let in_flight = self.state.window_in_flight;
        self.state.latencies.clear();
        self.state.window_in_flight = 0;
        self.state.window_start = None;
        let gradient = if sample_rtt.is_zero() {
            GRADIENT_MAX
        } else {
            (target.as_secs_f64() / sample_rtt.as_secs_f64()).clamp(GRADIENT_MIN, GRADIENT_MAX)
        };
        if gradient > 1.0 && in_flight.saturating_mul(2) < limit {
            return limit;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a limit below 2^53 scaled by a factor in [0.5, 2], floored and clamped"
        )]
        let next = {
            let scaled = limit as f64 * gradient;
            ((scaled + scaled.sqrt()).floor() as usize).clamp(self.min, self.max)
        };
        if next <= self.probe_level(usize::MAX) {
            self.state.windows_at_floor += 1;
            if self.state.windows_at_floor >= FLOOR_WINDOWS_BEFORE_PROBE {
                return self.begin_probe(now, next);
            }
        } else {
            self.state.windows_at_floor = 0;
        }
        next
    }
}

/// Builds a [`Gradient`]; settings are checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct GradientBuilder {
    gradient: Gradient,
}

impl GradientBuilder {
    /// How far above the minimum RTT latency may settle, as a share of it, in [0, 10]
    /// (default 0.25).
    pub fn buffer(mut self, buffer: f64) -> Self {
        self.gradient.buffer = buffer;
        self
    }

    /// Which percentile of a window's latencies stands for the window (default 0.9).
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.gradient.percentile = percentile;
        self
    }

    /// How often the limit moves, at most 60 s (default 100 ms; a window also needs 10
    /// samples).
    pub fn window(mut self, window: Duration) -> Self {
        self.gradient.window = window;
        self
    }

    /// How often the minimum RTT is measured again, longer than the window and at most 24 h
    /// (default 60 s).
    pub fn probe_interval(mut self, probe_interval: Duration) -> Self {
        self.gradient.probe_interval = probe_interval;
        self
    }

    /// Up to how much later than the interval a probe starts, as a share of it, in [0, 1]
    /// (default 0.15).
    pub fn probe_jitter(mut self, probe_jitter: f64) -> Self {
        self.gradient.probe_jitter = probe_jitter;
        self
    }

    /// The limit while probing (default 3; Envoy raised it from 1 to shed less during
    /// probes). The probe never raises the limit, and stays within the bounds.
    pub fn probe_limit(mut self, probe_limit: usize) -> Self {
        self.gradient.probe_limit = probe_limit;
        self
    }

    /// Successful requests a probe measures (default 50).
    pub fn probe_samples(mut self, probe_samples: usize) -> Self {
        self.gradient.probe_samples = probe_samples;
        self
    }

    /// How long a probe may last, in windows, from 1 to 100 (default 10: 1 s with the
    /// default window).
    ///
    /// A probe that has not got its [`probe_samples`](Self::probe_samples) successes by then
    /// ends at the first sample, of any outcome, that ends after the deadline: the limit
    /// goes back to what it was; the successes it got become the minimum RTT if there are at
    /// least `min(probe_samples, 10)` of them (at least 1 if there is no minimum yet), else
    /// the previous minimum is kept; the next scheduled probe is
    /// [`probe_interval`](Self::probe_interval) plus jitter later. A healthy probe takes
    /// about `probe_samples · S / probe_limit` for a service taking `S` (0.17 s for 10 ms
    /// with the defaults), so the default deadline fits services up to 60 ms, and measures
    /// 10 successes for services up to 300 ms; raise it, or the window, for slower ones.
    pub fn probe_deadline_windows(mut self, windows: u32) -> Self {
        self.gradient.probe_deadline_windows = windows;
        self
    }

    /// The lowest the limit goes (default 1). Separate from the probe limit, so softer
    /// probes do not raise the floor (Envoy issue #38338).
    pub fn min_limit(mut self, min: usize) -> Self {
        self.gradient.min = min;
        self
    }

    /// The highest the limit goes (default 1000).
    pub fn max_limit(mut self, max: usize) -> Self {
        self.gradient.max = max;
        self
    }

    /// The algorithm.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Setting`] for a setting outside its range (each one's docs give it);
    /// [`ConfigError::Bounds`] for bounds that are not `1 ≤ min ≤ max ≤ MAX_PERMITS`.
    pub fn build(self) -> Result<Gradient, ConfigError> {
        let gradient = self.gradient;
        let checks = [
            (
                (0.0..=MAX_BUFFER).contains(&gradient.buffer),
                "Gradient::buffer",
                "a share in [0, 10], such as 0.25",
            ),
            (
                gradient.percentile > 0.0 && gradient.percentile <= 1.0,
                "Gradient::percentile",
                "a share in (0, 1], such as 0.9",
            ),
            (
                !gradient.window.is_zero() && gradient.window <= MAX_WINDOW,
                "Gradient::window",
                "a duration above zero and at most 60 s, such as 100 ms",
            ),
            (
                gradient.probe_interval > gradient.window
                    && gradient.probe_interval <= MAX_PROBE_INTERVAL,
                "Gradient::probe_interval",
                "a duration longer than the window and at most 24 h, such as 60 s",
            ),
            (
                (0.0..=1.0).contains(&gradient.probe_jitter),
                "Gradient::probe_jitter",
                "a share in [0, 1], such as 0.15",
            ),
            (
                gradient.probe_limit > 0,
                "Gradient::probe_limit",
                "at least 1, such as 3",
            ),
            (
                gradient.probe_samples > 0,
                "Gradient::probe_samples",
                "at least 1, such as 50",
            ),
            (
                (1..=MAX_PROBE_DEADLINE_WINDOWS).contains(&gradient.probe_deadline_windows),
                "Gradient::probe_deadline_windows",
                "a number of windows from 1 to 100, such as 10",
            ),
        ];
        for (valid, setting, expected) in checks {
            if !valid {
                return Err(ConfigError::Setting { setting, expected });
            }
        }
        check_bounds(gradient.min, gradient.max)?;
        Ok(gradient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `gradient` windows of a saturated service of `capacity` slots taking
    /// `service` each, from limit `limit`, for `windows` windows; returns the limits.
    fn saturate(
        gradient: &mut Gradient,
        start: &mut Instant,
        mut limit: usize,
        capacity: usize,
        service: Duration,
        windows: usize,
    ) -> Vec<usize> {
        let mut limits = Vec::new();
        for _ in 0..windows {
            let latency = service * u32::try_from(limit.max(capacity)).expect("small")
                / u32::try_from(capacity).expect("small");
            // Enough samples to close a window.
            for _ in 0..20 {
                let sample = Sample::new(*start, latency, limit, Outcome::Success);
                limit = gradient
                    .update(&sample, limit)
                    .clamp(gradient.min, gradient.max);
                *start += Duration::from_millis(10);
            }
            limits.push(limit);
        }
        limits
    }

    #[test]
    fn probes_first_then_converges_where_latency_is_a_quarter_above_idle() {
        let mut gradient = Gradient::builder()
            .probe_jitter(0.0)
            .build()
            .expect("valid");
        let mut now = Instant::now();
        assert_eq!(gradient.start(now, 50), 3, "pinned while probing");
        let service = Duration::from_millis(10);
        let mut limit = 3;
        for _ in 0..50 {
            limit = gradient.update(&Sample::new(now, service, 3, Outcome::Success), limit);
            now += Duration::from_millis(1);
        }
        assert_eq!(limit, 50, "the old limit is back after the probe");
        assert_eq!(gradient.min_rtt(), Some(service));
        let limits = saturate(&mut gradient, &mut now, limit, 8, service, 40);
        // L* = 1.25·8 + √(1.25·8) ≈ 13.2.
        let settled = limits[30..].iter().copied();
        assert!(
            settled.clone().all(|l| (11..=15).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn a_lasting_slowdown_brings_the_limit_down_and_a_new_probe() {
        let mut gradient = Gradient::builder()
            .probe_jitter(0.0)
            .build()
            .expect("valid");
        let mut now = Instant::now();
        let mut limit = gradient.start(now, 20);
        for _ in 0..50 {
            limit = gradient.update(
                &Sample::new(now, Duration::from_millis(10), 3, Outcome::Success),
                limit,
            );
        }
        // The service is now 4 times slower at any concurrency.
        let limits = saturate(
            &mut gradient,
            &mut now,
            limit,
            1_000,
            Duration::from_millis(40),
            12,
        );
        assert!(limits.iter().any(|&l| l <= 3), "{limits:?}");
        assert_eq!(
            gradient.min_rtt(),
            Some(Duration::from_millis(40)),
            "{limits:?}"
        );
    }

    #[test]
    fn an_idle_limit_does_not_grow_and_drops_count_as_slow() {
        let mut gradient = Gradient::builder()
            .probe_jitter(0.0)
            .probe_samples(1)
            .build()
            .expect("valid");
        let mut now = Instant::now();
        let mut limit = gradient.start(now, 100);
        limit = gradient.update(
            &Sample::new(now, Duration::from_millis(10), 1, Outcome::Success),
            limit,
        );
        assert_eq!(limit, 100);
        for _ in 0..20 {
            now += Duration::from_millis(10);
            let fast = Sample::new(now, Duration::from_millis(5), 10, Outcome::Success);
            limit = gradient.update(&fast, limit);
        }
        assert_eq!(limit, 100, "fast but idle: held");
        let mut changed = None;
        for _ in 0..20 {
            now += Duration::from_millis(10);
            let refused = Sample::new(now, Duration::from_millis(1), 100, Outcome::Dropped);
            limit = gradient.update(&refused, limit);
            if limit != 100 {
                changed.get_or_insert(limit);
            }
        }
        // Fast 503s from below count as slow: g = 0.5, L' = ⌊50 + √50⌋.
        assert_eq!(changed, Some(57));
    }

    /// Feeds the first probe of `gradient` 50 successes of `service`; returns the limit.
    fn first_probe(
        gradient: &mut Gradient,
        now: Instant,
        initial: usize,
        service: Duration,
    ) -> usize {
        let mut limit = gradient.start(now, initial);
        for _ in 0..50 {
            limit = gradient.update(&Sample::new(now, service, 3, Outcome::Success), limit);
        }
        limit
    }

    #[test]
    fn a_probe_without_enough_successes_ends_at_its_deadline() {
        let mut gradient = Gradient::builder()
            .probe_jitter(0.0)
            .build()
            .expect("valid");
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(first_probe(&mut gradient, t, 50, ms(10)), 50);
        assert_eq!(gradient.min_rtt(), Some(ms(10)));
        // The next probe is due 60 s after the first ended (at t + 10 ms).
        let due = Sample::new(t + ms(60_010), Duration::ZERO, 3, Outcome::Success);
        let mut limit = gradient.update(&due, 50);
        assert_eq!(limit, 3, "a probe starts at t0 = t + 60.01 s");
        let t0 = due.ended();
        // The backend now fails 99 % of requests: every 10 ms a fast 503 or a client that
        // hangs up, and one success of 20 ms per second: 4 in the 1 s = 10 windows.
        let mut successes = 0;
        for i in 1..=99_u32 {
            let outcome = match i % 25 {
                0 => Outcome::Success,
                1 => Outcome::Ignored,
                _ => Outcome::Dropped,
            };
            successes += usize::from(outcome == Outcome::Success);
            let latency = if outcome == Outcome::Success {
                ms(20)
            } else {
                ms(1)
            };
            let sample = Sample::new(t0 + ms(10) * (i - 1), latency, 3, outcome);
            assert!(sample.ended() < t0 + ms(1_000));
            limit = gradient.update(&sample, limit);
            assert_eq!(limit, 3, "pinned before the deadline, sample {i}");
        }
        assert_eq!(successes, 3);
        // The first sample that ends at the deadline, t0 + 10 windows, ends the probe, be it
        // a drop: the old limit comes back, and 3 successes are too few (< 10) to replace
        // the minimum RTT.
        let late = Sample::new(t0 + ms(999), ms(1), 3, Outcome::Dropped);
        limit = gradient.update(&late, limit);
        assert_eq!(limit, 50, "the previous limit is back at the deadline");
        assert_eq!(
            gradient.min_rtt(),
            Some(ms(10)),
            "the previous minimum is kept"
        );
        // No probe again at once: the next one is due 60 s after this one ended. Idle
        // successes at the minimum RTT hold the limit, drops or not.
        for i in 0..200_u32 {
            let outcome = if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Ignored
            };
            let sample = Sample::new(t0 + ms(1_000) + ms(10) * i, ms(10), 3, outcome);
            limit = gradient.update(&sample, limit);
            assert_eq!(limit, 50, "no new probe, sample {i}");
        }
    }

    #[test]
    fn a_first_probe_without_successes_ends_and_is_retried_after_the_interval() {
        let mut gradient = Gradient::builder()
            .probe_jitter(0.0)
            .build()
            .expect("valid");
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut limit = gradient.start(t, 50);
        assert_eq!(limit, 3);
        // Everything fails from the start: only drops, every 10 ms.
        for i in 0..100_u32 {
            let sample = Sample::new(t + ms(10) * i, ms(5), 3, Outcome::Dropped);
            limit = gradient.update(&sample, limit);
            assert_eq!(limit, 3, "pinned before the deadline, sample {i}");
        }
        let late = Sample::new(t + ms(1_000), ms(5), 3, Outcome::Dropped);
        limit = gradient.update(&late, limit);
        assert_eq!(limit, 50, "the initial limit is back at t + 1 s");
        assert_eq!(gradient.min_rtt(), None, "nothing measured");
        // Without a minimum RTT the limit holds, whatever the samples, until the next probe
        // 60 s after the last one ended (t + 1.005 s).
        for i in 0..5_000_u32 {
            let outcome = if i % 3 == 0 {
                Outcome::Success
            } else {
                Outcome::Dropped
            };
            let sample = Sample::new(t + ms(1_005) + ms(10) * i, ms(1), 100, outcome);
            assert!(sample.ended() < t + ms(61_005));
            limit = gradient.update(&sample, limit);
            assert_eq!(limit, 50, "held without a minimum, sample {i}");
        }
        let due = Sample::new(t + ms(61_005), Duration::ZERO, 3, Outcome::Dropped);
        limit = gradient.update(&due, limit);
        assert_eq!(limit, 3, "the probe is retried after the interval");
        let t0 = due.ended();
        // The backend is back, but slow: 12 successes of 80 ms before the deadline, fewer
        // than the 50 a probe wants, are enough (>= 10) for a first minimum.
        for i in 0..12_u32 {
            let sample = Sample::new(t0 + ms(80) * i, ms(80), 3, Outcome::Success);
            limit = gradient.update(&sample, limit);
            assert_eq!(limit, 3, "pinned before the deadline, success {i}");
        }
        let late = Sample::new(t0 + ms(960), ms(80), 3, Outcome::Success);
        limit = gradient.update(&late, limit);
        assert_eq!(limit, 50);
        assert_eq!(
            gradient.min_rtt(),
            Some(ms(80)),
            "measured from 13 successes"
        );
    }

    /// Runs a probe and a few windows, with drops, through `gradient`.
    fn exercise(mut gradient: Gradient) {
        let mut now = Instant::now();
        let mut limit = gradient.start(now, 20);
        for i in 0..200_u32 {
            let outcome = if i % 5 == 0 {
                Outcome::Dropped
            } else {
                Outcome::Success
            };
            let sample = Sample::new(now, Duration::from_millis(10), limit, outcome);
            limit = gradient
                .update(&sample, limit)
                .clamp(gradient.min, gradient.max);
            now += Duration::from_millis(5);
        }
    }

    #[test]
    fn extreme_settings_are_refused_or_never_panic() {
        let extreme = [
            Gradient::builder().probe_interval(Duration::MAX),
            Gradient::builder()
                .window(Duration::MAX)
                .probe_interval(Duration::MAX),
            Gradient::builder().buffer(1e300),
            Gradient::builder().buffer(f64::MAX),
            Gradient::builder().buffer(1e9),
            Gradient::builder()
                .window(MAX_WINDOW)
                .probe_interval(MAX_PROBE_INTERVAL)
                .probe_deadline_windows(MAX_PROBE_DEADLINE_WINDOWS),
        ];
        for builder in extreme {
            match builder.build() {
                Ok(gradient) => exercise(gradient),
                Err(error) => assert!(matches!(error, ConfigError::Setting { .. }), "{error}"),
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            Gradient::builder().buffer(-0.1),
            Gradient::builder().percentile(0.0),
            Gradient::builder().percentile(1.5),
            Gradient::builder().window(Duration::ZERO),
            Gradient::builder().probe_interval(Duration::from_millis(100)),
            Gradient::builder().probe_jitter(2.0),
            Gradient::builder().probe_limit(0),
            Gradient::builder().probe_samples(0),
            Gradient::builder().probe_deadline_windows(0),
            Gradient::builder().probe_deadline_windows(101),
        ];
        for builder in bad {
            assert!(matches!(builder.build(), Err(ConfigError::Setting { .. })));
        }
        assert_eq!(
            Gradient::builder().min_limit(0).build().err(),
            Some(ConfigError::Bounds { min: 0, max: 1000 })
        );
    }
}
