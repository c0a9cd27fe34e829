//! Coalescing: concurrent misses for one URI make one call to the inner service.
//!
//! The first miss leads. Later ones follow: they wait, bounded, until the leader's fill
//! ends (stored, refused or abandoned), then look again. The leader's guard moves into its
//! response body, so the fill ends when the body does, or when the leader is dropped.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::key::PrimaryKey;

const SHARDS: usize = 16;

/// A flight: its channel, and when it started.
type Flight = (watch::Receiver<()>, Instant);
type Shard = Mutex<HashMap<PrimaryKey, Flight>>;

/// The fills in flight, by URI.
pub(crate) struct Flights {
    shards: Box<[Shard]>,
    hasher: foldhash::quality::RandomState,
    /// How long a flight makes others wait. An older one (its leader's client reads the
    /// body slowly, or its origin hangs) no longer holds anyone back: the next miss leads
    /// a new one.
    timeout: Duration,
}

/// What a miss is to do.
pub(crate) enum Role {
    /// Fill the cache, and end the flight (drop the guard) when done.
    Lead(FlightGuard),
    /// Wait for the leader's flight to end, then look again.
    Follow(watch::Receiver<()>),
}

impl Flights {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            timeout,
        }
    }

    fn shard(&self, key: &PrimaryKey) -> &Shard {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    /// Leads a fill of `key`, or follows the one in flight.
    pub(crate) fn join(self: &Arc<Self>, key: &PrimaryKey, now: Instant) -> Role {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((receiver, started)) = shard.get(key)
            && receiver.has_changed().is_ok()
            && now.saturating_duration_since(*started) < self.timeout
        {
            return Role::Follow(receiver.clone());
        }
        let (sender, receiver) = watch::channel(());
        shard.insert(key.clone(), (receiver, now));
        Role::Lead(FlightGuard {
            flights: Arc::clone(self),
            key: key.clone(),
            sender: Some(sender),
        })
    }
}

/// A leader's hold on its flight; dropping it ends the flight and wakes the followers.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: PrimaryKey,
    sender: Option<watch::Sender<()>>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let mut shard = self
            .flights
            .shard(&self.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Remove the entry only if it is still this flight's.
        if shard
            .get(&self.key)
            .is_some_and(|(receiver, _)| receiver.same_channel(&sender.subscribe()))
        {
            shard.remove(&self.key);
        }
        drop(shard);
        // Dropping the sender closes the channel: every follower's wait ends.
        drop(sender);
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Waits until the flight `receiver` follows has ended.
pub(crate) async fn landed(mut receiver: watch::Receiver<()>) {
    // `changed` fails once the sender is gone; the leader never sends otherwise.
    while receiver.changed().await.is_ok() {}
}
