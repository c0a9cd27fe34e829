//! A Redis store for floodgate's rate limits, so that every replica behind a load balancer
//! enforces one limit together instead of one each.
//!
//! A [`RateLimitLayer`](floodgate_ratelimit::RateLimitLayer) counts in memory unless it is
//! given a [`RateLimitStore`](floodgate_ratelimit::RateLimitStore). [`RedisStore`] is one:
//! the same policies, token buckets and sliding windows, kept in Redis and decided by one Lua
//! script, one round trip per request.
//!
//! # Example
//!
//! ```no_run
//! use floodgate_ratelimit::{Algorithm, Check, Quota, RateLimitStore};
//! use floodgate_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//!
//! // What the layer sends for one request: one check per policy that applies to it.
//! let decisions = store
//!     .check(vec![
//!         Check::new("per-ip", "203.0.113.9", Algorithm::TokenBucket, Quota::per_second(10), 1),
//!         Check::new("per-key", "key-42", Algorithm::SlidingWindow, Quota::per_minute(100), 1),
//!     ])
//!     .await?;
//! assert_eq!(decisions.len(), 2);
//! if decisions.iter().all(|decision| decision.allowed) {
//!     println!("admitted; {} left this second", decisions[0].remaining);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Give it to a layer with
//! [`RateLimitLayerBuilder::store`](floodgate_ratelimit::RateLimitLayerBuilder::store); the
//! layer then bounds each call with its deadline and applies its fail-open or fail-closed
//! choice when Redis cannot answer.
//!
//! # Guarantees
//!
//! - **Exact across replicas.** Every decision is one atomic script call, so N replicas
//!   admit what one process would: with a token bucket of burst `B`, `B` requests at once in
//!   total, never `N × B`; the tests run 3 stores × 50 concurrent requests against a quota
//!   of 100 and count exactly 100 admitted.
//! - **The in-memory contracts.** The script computes what
//!   [`Algorithm`](floodgate_ratelimit::Algorithm) documents, in the same integer
//!   arithmetic (checked against the in-memory limiter in the tests): a token bucket
//!   admits `B + ⌈W/e⌉ − 1` in any window `W`, a sliding window `L` for even traffic and at
//!   most `2L − 1` under adversarial timing. Token-bucket intervals are whole
//!   nanoseconds (1 000 000 per second is an interval of 1 µs, not zero), exact while
//!   `B · e` is under 2⁵³ ns (104 days); windows are counted in microseconds, exact while
//!   `L ×` the window in µs is under 2⁵³ (2.5 million per hour).
//! - **All or nothing.** If every enforced check of a request fits, each check that fits is
//!   charged; if one does not, none is. A dry-run check that does not fit changes nothing.
//! - **One round trip.** In steady state one command per request: `EVALSHA`. After a
//!   restart, a failover or `SCRIPT FLUSH`, Redis answers `NOSCRIPT` once and redis-rs
//!   loads the script and runs it again (`SCRIPT LOAD` + `EVALSHA`).
//! - **One clock.** By default the script reads Redis's `TIME` (µs), so replicas' clocks do
//!   not matter. [`RedisClock::Client`] sends each replica's wall clock instead, for a managed
//!   Redis that forbids `TIME`. Either way a key's state never moves back in time: a token
//!   bucket's TAT only grows (`max(TAT, now)`), a window's start only moves forward.
//! - **Nothing immortal.** Each charge writes its key with its TTL in one `SET … PX`: the
//!   time until the state is equivalent to no key (a token bucket: until its TAT, rounded up
//!   to a millisecond; a window: two windows after the current one started), plus a second,
//!   so that replicas whose clocks differ by less never find a key gone early. An idle
//!   client costs Redis nothing; a refused request writes nothing. Each active key
//!   holds one string of at most 40 bytes (plus the key and Redis's own overhead per key).
//! - **Redis Cluster.** Keys are `{prefix}:policy:key`, the braces making the prefix the
//!   hash tag, so all of a store's keys live in one slot. They must: one request's checks
//!   count different clients (an IP and an API key), and a script may only touch keys of one
//!   slot. The cost is that one cluster node holds every key of a prefix; to spread
//!   applications over nodes, give each its own prefix.
//! - **Failures are errors, quickly.** If Redis is down when a store is built, `build`
//!   fails: in under 0.1 s when the connection is refused, within about twice the
//!   connection timeout (1 s by default) when it hangs. Once built, a broken
//!   connection makes `check` fail with
//!   [`StoreError::Unavailable`](floodgate_ratelimit::StoreError::Unavailable): at once for
//!   the call that finds it broken, then, while Redis stays down, after the reconnection in
//!   flight (two attempts 50–100 ms apart; about 75 ms per check when connections are
//!   refused, up to twice the connection timeout when they hang). When Redis is back, the
//!   next reconnection succeeds and checks go on, with no restart. A call that gets no
//!   answer fails after the response timeout (500 ms by default); a peer that vanished
//!   without closing the connection is detected by the kernel within about 5 s. A script
//!   error or a malformed reply is
//!   [`StoreError::Failed`](floodgate_ratelimit::StoreError::Failed). A Redis without
//!   persistence forgets every count when it restarts: clients start afresh.
//!
//! # Between replicas
//!
//! [`Broadcast`] carries short messages from one replica to every other over a Redis
//! channel: the replicas of a service publish what a write made stale, so that none of
//! them keeps serving an old copy from its own response cache.
//!
//! Needs Redis 3.2 or later (tested with 7.0). Policy names become part of the keys. A
//! layer's policy names are HTTP tokens, which cannot contain `:`, so no two policies'
//! keys can meet; a caller of [`RateLimitStore::check`](floodgate_ratelimit::RateLimitStore)
//! with its own names should keep that rule (`a:b` + `c` and `a` + `b:c` would meet).

mod broadcast;
mod error;
mod script;
mod store;

pub use broadcast::{Broadcast, Heard};
pub use error::RedisStoreError;
pub use store::{RedisClock, RedisStore, RedisStoreBuilder};
