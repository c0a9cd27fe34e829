//! One limit's permits and its wait queue: first come, first served, or newest first once
//! the queue has gone stale (adaptive LIFO).
//!
//! tokio's `Semaphore` keeps its waiters in a FIFO list that cannot be reordered, so the
//! queue is kept here and the semaphore only counts permits: `try_acquire`, and the
//! `add_permits` / `forget_permits` of an adaptive limit. A permit given back goes to the
//! semaphore, then, if anyone waits, straight to the waiter chosen under the queue's lock.
//!
//! No lost wake-up: a waiter takes its queue place (`queued`, a sequentially consistent
//! increment) before it tries the semaphore under the lock; a releaser frees its permit,
//! then reads `queued`. With a `SeqCst` fence between the two steps on both sides, either
//! the waiter's try sees the freed permit, or the releaser sees the waiter and hands the
//! permit over under the lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One limit: its permits, its queue, and how many requests hold a place in it.
#[derive(Debug)]
pub(crate) struct Slot {
    semaphore: Arc<Semaphore>,
    /// Queue places taken: waiters in `waiters`, and requests about to join or just granted.
    pub(crate) queued: AtomicUsize,
    /// Of `queued`, waiters granted a permit that have not yet taken it (not polled since,
    /// or leaving). They wait for nothing, so they neither fill the queue nor keep a
    /// newcomer from a free permit; see [`waiting`](Self::waiting).
    granted_pending: AtomicUsize,
    /// Permits an adaptive limit shrank away while they were held; see `limiter`.
    debt: AtomicUsize,
    waiters: Mutex<VecDeque<Arc<Waiter>>>,
    /// Serve the newest waiter first once the oldest has waited this long.
    lifo_after: Option<Duration>,
}

/// What joining the queue gave.
pub(crate) enum Wait {
    /// A permit was free and nobody was ahead.
    Granted(OwnedSemaphorePermit),
    /// In the queue: poll the waiter for the permit.
    Queued(Arc<Waiter>),
}

/// Takes up to `most` from `counter`; returns how much it took.
pub(crate) fn take_up_to(counter: &AtomicUsize, most: usize) -> usize {
    let before = counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |value| {
            Some(value - value.min(most))
        })
        .unwrap_or_else(|value| value);
    before.min(most)
}

impl Slot {
    pub(crate) fn new(permits: usize, lifo_after: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            queued: AtomicUsize::new(0),
            granted_pending: AtomicUsize::new(0),
            debt: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::new()),
            lifo_after,
        })
    }

    /// A permit at once, if one is free and nobody waits (a newcomer does not pass the
    /// queue).
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting(self.queued.load(Ordering::Relaxed)) > 0 {
            return None;
        }
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }

    /// Of `queued` queue places, those still waiting for a permit.
    pub(crate) fn waiting(&self, queued: usize) -> usize {
        queued.saturating_sub(self.granted_pending.load(Ordering::Relaxed))
    }

    /// A granted waiter took its permit from the queue: it no longer counts as pending.
    pub(crate) fn granted_taken(&self) {
        self.granted_pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Joins the queue, having taken a place in `queued`.
    pub(crate) fn wait(&self) -> Wait {
        fence(Ordering::SeqCst);
        let mut waiters = self.lock();
        // Permits free now go to those already waiting.
        self.dispatch_locked(&mut waiters);
        if waiters.is_empty()
            && let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned()
        {
            return Wait::Granted(permit);
        }
        let waiter = Arc::new(Waiter {
            enqueued: Instant::now(),
            state: Mutex::default(),
        });
        waiters.push_back(Arc::clone(&waiter));
        Wait::Queued(waiter)
    }

    /// Gives a permit back: to pay an adaptive limit's debt, or to the next waiter.
    pub(crate) fn release(&self, permit: OwnedSemaphorePermit) {
        if take_up_to(&self.debt, 1) == 1 {
            permit.forget();
            return;
        }
        drop(permit);
        fence(Ordering::SeqCst);
        if self.queued.load(Ordering::Relaxed) > 0 {
            self.dispatch();
        }
    }

    /// Takes `waiter` out of the queue (it timed out or was dropped); a permit granted to it
    /// meanwhile goes on to the next.
    pub(crate) fn leave(&self, waiter: &Waiter) {
        if !waiter.granted() {
            let mut waiters = self.lock();
            if let Some(index) = waiters
                .iter()
                .position(|queued| std::ptr::eq(Arc::as_ptr(queued), waiter))
            {
                waiters.remove(index);
            }
        }
        if let Some(permit) = waiter.take() {
            self.granted_taken();
            self.release(permit);
        }
    }

    /// Adds `permits` for an adaptive limit: pays its debt first.
    pub(crate) fn grow(&self, permits: usize) {
        let paid = take_up_to(&self.debt, permits);
        if permits > paid {
            self.semaphore.add_permits(permits - paid);
            self.dispatch();
        }
    }

    /// Removes `permits` for an adaptive limit: free ones at once, the rest as they are
    /// given back.
    pub(crate) fn shrink(&self, permits: usize) {
        // Debt first, so a permit given back from now on is forgotten, not freed.
        self.debt.fetch_add(permits, Ordering::AcqRel);
        let forgotten = self.semaphore.forget_permits(permits);
        // Permits given back meanwhile paid some of the debt themselves; what was taken
        // twice goes back.
        let cancelled = take_up_to(&self.debt, forgotten);
        if cancelled < forgotten {
            self.semaphore.add_permits(forgotten - cancelled);
            self.dispatch();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dispatch(&self) {
        let mut waiters = self.lock();
        self.dispatch_locked(&mut waiters);
    }

    fn dispatch_locked(&self, waiters: &mut VecDeque<Arc<Waiter>>) {
        while let Some(oldest) = waiters.front() {
            // Facebook's adaptive LIFO: first come, first served while the queue drains;
            // once its oldest has waited past the threshold, the queue is standing and the
            // newest, most likely still wanted, goes first. The oldest time out.
            let newest_first = self
                .lifo_after
                .is_some_and(|after| oldest.enqueued.elapsed() >= after);
            let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() else {
                return;
            };
            let next = if newest_first {
                waiters.pop_back()
            } else {
                waiters.pop_front()
            };
            if let Some(next) = next {
                // Counted before the waiter can see the permit, so its taking it never
                // makes the count wrap.
                self.granted_pending.fetch_add(1, Ordering::Relaxed);
                next.grant(permit);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// A request waiting in a [`Slot`]'s queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    enqueued: Instant,
    state: Mutex<WaiterState>,
}

#[derive(Debug, Default)]
struct WaiterState {
    granted: bool,
    permit: Option<OwnedSemaphorePermit>,
    waker: Option<Waker>,
}

impl Waiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaiterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grant(&self, permit: OwnedSemaphorePermit) {
        let waker = {
            let mut state = self.lock();
            state.granted = true;
            state.permit = Some(permit);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn granted(&self) -> bool {
        self.lock().granted
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.lock().permit.take()
    }

    /// The permit, once granted; until then the task is woken when it is.
    pub(crate) fn poll_permit(&self, cx: &mut Context<'_>) -> Poll<OwnedSemaphorePermit> {
        let mut state = self.lock();
        if let Some(permit) = state.permit.take() {
            return Poll::Ready(permit);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(slot: &Slot, count: usize) -> Vec<OwnedSemaphorePermit> {
        (0..count)
            .map(|_| slot.try_acquire().expect("a free permit"))
            .collect()
    }

    #[test]
    fn shrinking_below_the_held_permits_frees_nothing_until_the_debt_is_paid() {
        let slot = Slot::new(10, None);
        let mut held = held(&slot, 8).into_iter();
        slot.shrink(6);
        assert_eq!(slot.available(), 0);
        // Four of the eight held pay the debt; only then does a permit come free.
        for permit in held.by_ref().take(4) {
            slot.release(permit);
            assert_eq!(slot.available(), 0);
        }
        slot.release(held.next().expect("held"));
        assert_eq!(slot.available(), 1);
        for permit in held {
            slot.release(permit);
        }
        assert_eq!(slot.available(), 4);
    }

    #[test]
    fn growing_pays_the_debt_before_adding_permits() {
        let slot = Slot::new(10, None);
        let held = held(&slot, 10);
        slot.shrink(8);
        slot.grow(4);
        assert_eq!(slot.available(), 0, "4 of the 8 owed are forgiven");
        for permit in held {
            slot.release(permit);
        }
        assert_eq!(slot.available(), 6);
        slot.grow(3);
        assert_eq!(slot.available(), 9);
    }

    /// Joins the queue as the service does: a place first, then the list.
    fn join(slot: &Slot) -> Arc<Waiter> {
        slot.queued.fetch_add(1, Ordering::SeqCst);
        match slot.wait() {
            Wait::Queued(waiter) => waiter,
            Wait::Granted(_) => panic!("every permit is held"),
        }
    }

    fn granted(waiter: &Waiter) -> bool {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        match waiter.poll_permit(&mut cx) {
            Poll::Ready(permit) => {
                // Back in the waiter, as if not yet polled.
                waiter.lock().permit = Some(permit);
                true
            }
            Poll::Pending => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_first_come_first_served_until_it_goes_stale() {
        let slot = Slot::new(1, Some(Duration::from_millis(50)));
        let mut held = held(&slot, 1);
        let (first, second) = (join(&slot), join(&slot));
        slot.release(held.remove(0));
        assert!(granted(&first) && !granted(&second), "FIFO while fresh");
        let third = join(&slot);
        tokio::time::advance(Duration::from_millis(50)).await;
        // The oldest waiting (second) has waited 50 ms: the newest goes first.
        slot.release(first.take().expect("granted"));
        assert!(granted(&third) && !granted(&second));
        // Leaving with a permit passes it on.
        slot.leave(&third);
        assert!(granted(&second));
        slot.leave(&second);
        assert_eq!(slot.available(), 1);
    }

    #[test]
    fn a_waiter_that_leaves_is_never_granted() {
        let slot = Slot::new(1, None);
        let mut held = held(&slot, 1);
        let (gone, next) = (join(&slot), join(&slot));
        slot.leave(&gone);
        slot.release(held.remove(0));
        assert!(!granted(&gone) && granted(&next));
    }
}
