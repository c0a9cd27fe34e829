//! The `CoDel`-style overload signal of [`LoadShedLayer`](super::LoadShedLayer): the minimum
//! sojourn time below the layer over an interval, and the in-flight ceiling it sets.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use floodgate_core::metrics::SHED_LOAD_SHED_CEILING;
use tokio::time::Instant;

/// No ceiling.
pub(crate) const NONE: usize = usize::MAX;

/// Tracks the sojourn of admitted requests per interval and keeps the in-flight ceiling.
///
/// Lock-free on every request: a completion is a `fetch_min` and an increment, a decision
/// one load. Once per interval one thread (whoever sees the interval over and wins a
/// `try_lock`) closes it.
#[derive(Debug)]
pub(crate) struct Sojourn {
    target: u64,
    interval: u64,
    base: Instant,
    /// When the current interval ends, in nanoseconds from `base`.
    interval_end: AtomicU64,
    /// `first_above_time` in `CoDel`: when the sojourns, all above the target since, will
    /// have been so for an interval (nanoseconds from `base`; `u64::MAX`: the last was at
    /// or below the target).
    first_above: AtomicU64,
    /// A response in the interval came after an interval of sojourns above the target.
    standing: AtomicBool,
    /// Responses in the current interval.
    completions: AtomicU64,
    /// Responses in the last interval, and its length in nanoseconds.
    last_completions: AtomicU64,
    last_elapsed: AtomicU64,
    /// Requests awaited their response head when the interval began.
    busy_at_start: AtomicBool,
    /// The ceiling refused someone in the interval.
    shed: AtomicBool,
    ceiling: AtomicUsize,
    closing: Mutex<()>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Sojourn {
    pub(crate) fn new(target: Duration, interval: Duration) -> Self {
        let interval = nanos(interval);
        Self {
            target: nanos(target),
            interval,
            base: Instant::now(),
            interval_end: AtomicU64::new(interval),
            first_above: AtomicU64::new(u64::MAX),
            completions: AtomicU64::new(0),
            standing: AtomicBool::new(false),
            last_completions: AtomicU64::new(0),
            last_elapsed: AtomicU64::new(0),
            busy_at_start: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            ceiling: AtomicUsize::new(NONE),
            closing: Mutex::new(()),
        }
    }

    /// The in-flight ceiling now, [`NONE`] while there is no standing queue.
    pub(crate) fn ceiling(&self) -> usize {
        self.ceiling.load(Ordering::Relaxed)
    }

    fn since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }

    /// An admitted request's response came back at `now` after `sojourn`.
    pub(crate) fn record(&self, now: Instant, sojourn: Duration) {
        self.completions.fetch_add(1, Ordering::AcqRel);
        if nanos(sojourn) <= self.target {
            self.first_above.store(u64::MAX, Ordering::Release);
            self.standing.store(false, Ordering::Release);
            return;
        }
        let now = self.since_base(now);
        let first_above = self.first_above.load(Ordering::Acquire);
        if first_above == u64::MAX {
            // The first above the target: a standing queue if it lasts an interval.
            let _ = self.first_above.compare_exchange(
                u64::MAX,
                now.saturating_add(self.interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        } else if now >= first_above {
            self.standing.store(true, Ordering::Release);
            // It did: set a ceiling now rather than at the end of the interval, since at
            // 4× overload every interval of delay queues three intervals of work below.
            if self.ceiling() == NONE
                && let Ok(_closing) = self.closing.try_lock()
                && self.ceiling() == NONE
            {
                let begun = self
                    .interval_end
                    .load(Ordering::Acquire)
                    .saturating_sub(self.interval);
                let elapsed = self.last_elapsed.load(Ordering::Relaxed) + now.saturating_sub(begun);
                let completions = self.last_completions.load(Ordering::Relaxed)
                    + self.completions.load(Ordering::Relaxed);
                self.set(self.drained(completions, elapsed), Some(completions));
            }
        }
    }

    /// Little's law: with throughput λ, keeping `λ · target` in flight makes the sojourn
    /// about the target.
    fn drained(&self, completions: u64, elapsed: u64) -> usize {
        let drained =
            u128::from(completions) * u128::from(self.target) / u128::from(elapsed.max(1));
        usize::try_from(drained).unwrap_or(NONE - 1).max(1)
    }

    fn set(&self, next: usize, completions: Option<u64>) {
        let ceiling = self.ceiling.swap(next, Ordering::Relaxed);
        if next != ceiling {
            tracing::debug!(
                target: "floodgate::shed",
                ceiling = (next != NONE).then_some(next),
                completions,
                "load shedding ceiling changed"
            );
            #[allow(
                clippy::cast_precision_loss,
                reason = "a gauge of a ceiling far below 2^52"
            )]
            metrics::gauge!(SHED_LOAD_SHED_CEILING.name).set(if next == NONE {
                0.0
            } else {
                next as f64
            });
        }
    }

    /// The ceiling refused a request.
    pub(crate) fn note_shed(&self) {
        self.shed.store(true, Ordering::Relaxed);
    }

    /// Closes the interval if it is over, with `awaiting_head` admitted requests still
    /// waiting for their response head now (bodies still streaming are not counted).
    pub(crate) fn tick(&self, now: Instant, awaiting_head: usize) {
        let now = self.since_base(now);
        let end = self.interval_end.load(Ordering::Acquire);
        if now < end {
            return;
        }
        let Ok(_closing) = self.closing.try_lock() else {
            return;
        };
        if self.interval_end.load(Ordering::Acquire) != end {
            return;
        }
        let elapsed = now - end.saturating_sub(self.interval);
        let completions = self.completions.swap(0, Ordering::AcqRel);
        self.last_completions.store(completions, Ordering::Relaxed);
        self.last_elapsed.store(elapsed, Ordering::Relaxed);
        let shed = self.shed.swap(false, Ordering::Relaxed);
        let busy = self
            .busy_at_start
            .swap(awaiting_head > 0, Ordering::Relaxed);
        // CoDel: a queue is standing when every request for an interval waited longer than
        // the target. Nothing finishing while requests awaited their head the whole
        // interval (at least the target) is as bad; with nothing awaiting a head, "no
        // completions" is only a quiet spell.
        let standing = self.standing.swap(false, Ordering::AcqRel)
            || (completions == 0 && busy && awaiting_head > 0);
        let ceiling = self.ceiling();
        let next = if standing {
            self.drained(completions, elapsed)
        } else if ceiling == NONE || !shed {
            // Demand fell below the ceiling: no more need for one.
            NONE
        } else {
            // No standing queue, yet the ceiling refused some: feel for more room.
            ceiling.saturating_add((ceiling / 4).max(1)).min(NONE - 1)
        };
        self.set(next, Some(completions));
        self.interval_end
            .store(now.saturating_add(self.interval), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_sets_a_ceiling_from_the_throughput() {
        let sojourn = Sojourn::new(20 * MS, 100 * MS);
        // Every response above the target for an interval: 50 in 100 ms, 500/s · 20 ms.
        for _ in 0..50 {
            sojourn.record(Instant::now(), 30 * MS);
            tokio::time::advance(2 * MS).await;
            assert_eq!(sojourn.ceiling(), NONE, "not before the interval is up");
        }
        sojourn.record(Instant::now(), 30 * MS);
        assert_eq!(
            sojourn.ceiling(),
            10,
            "at once, from 51 responses in 100 ms"
        );
        sojourn.tick(Instant::now(), 40);
        assert_eq!(sojourn.ceiling(), 10);
        // A good interval that still refused some grows it by a quarter...
        sojourn.record(Instant::now(), 5 * MS);
        sojourn.note_shed();
        tokio::time::advance(100 * MS).await;
        sojourn.tick(Instant::now(), 10);
        assert_eq!(sojourn.ceiling(), 12);
        // ...and one that refused none lifts it.
        sojourn.record(Instant::now(), 5 * MS);
        tokio::time::advance(100 * MS).await;
        sojourn.tick(Instant::now(), 3);
        assert_eq!(sojourn.ceiling(), NONE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_drains_within_the_interval_is_no_standing_queue() {
        let sojourn = Sojourn::new(20 * MS, 100 * MS);
        for waited in [5, 60, 90, 120] {
            sojourn.record(Instant::now(), waited * MS);
            tokio::time::advance(30 * MS).await;
        }
        sojourn.record(Instant::now(), 10 * MS);
        tokio::time::advance(100 * MS).await;
        sojourn.tick(Instant::now(), 3);
        assert_eq!(sojourn.ceiling(), NONE);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_finishing_for_a_whole_interval_is_a_standing_queue() {
        let sojourn = Sojourn::new(20 * MS, 100 * MS);
        // A request that just arrived at the end of an idle interval is not.
        tokio::time::advance(100 * MS).await;
        sojourn.tick(Instant::now(), 1);
        assert_eq!(sojourn.ceiling(), NONE);
        // Still in flight a whole interval later, with nothing done: it is.
        tokio::time::advance(100 * MS).await;
        sojourn.tick(Instant::now(), 5);
        assert_eq!(sojourn.ceiling(), 1);
        // Before the interval ends nothing changes.
        sojourn.record(Instant::now(), MS);
        tokio::time::advance(50 * MS).await;
        sojourn.tick(Instant::now(), 5);
        assert_eq!(sojourn.ceiling(), 1);
    }
}
