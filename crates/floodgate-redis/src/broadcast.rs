//! [`Broadcast`]: what one replica publishes, every other replica hears, over a Redis
//! channel. The replicas of a service use it to drop from their own caches what another
//! replica's write made stale.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client, RedisError};
use tokio::sync::watch;

/// How long the listener waits before it connects again after losing Redis.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// What a listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heard<'a> {
    /// Another replica published this.
    Message(&'a str),
    /// The listener (re)subscribed. Messages published while it was not subscribed are
    /// lost (Redis pub/sub keeps nothing), so whatever they would have dropped must be
    /// dropped now: for a cache, everything.
    Resubscribed,
}

/// A channel between replicas on one Redis.
///
/// - Each replica creates one with the same `channel` and a listener, and calls
///   [`publish`](Self::publish); every *other* replica's listener hears the message (a
///   replica does not hear itself).
/// - Delivery is Redis pub/sub: at most once, to the replicas subscribed at that moment. A
///   listener that loses Redis connects again by itself and is told so
///   ([`Heard::Resubscribed`]), so it can drop whatever it might have missed.
/// - The listener runs on the tokio runtime until the last clone of the `Broadcast` is
///   dropped.
///
/// ```no_run
/// use floodgate_redis::{Broadcast, Heard};
///
/// # async fn run() -> Result<(), redis::RedisError> {
/// let invalidations = Broadcast::connect("redis://127.0.0.1:6379", "shop:invalidate", |heard| {
///     match heard {
///         Heard::Message(prefix) => println!("drop everything under {prefix}"),
///         Heard::Resubscribed => println!("drop everything"),
///         _ => {}
///     }
/// })
/// .await?;
/// invalidations.publish("/items").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Broadcast {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    channel: String,
    /// Put in front of each message, so that the listener skips its own replica's.
    sender: String,
    /// Dropped with the last `Broadcast`: the listener stops.
    _stop: watch::Sender<()>,
}

impl Broadcast {
    /// Connects to the Redis at `url`, subscribes to `channel`, and calls `listener` with
    /// every message another replica publishes there (and after each resubscription).
    ///
    /// `listener` runs on the listener task: keep it short (invalidating a cache is).
    ///
    /// # Errors
    ///
    /// The [`RedisError`] if `url` is not a Redis URL or Redis cannot be reached now.
    pub async fn connect(
        url: &str,
        channel: &str,
        listener: impl Fn(Heard<'_>) + Send + Sync + 'static,
    ) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let connection = ConnectionManager::new(client.clone()).await?;
        let sender = sender_id();
        // Subscribed before `connect` returns: nothing published after it is missed.
        let pubsub = subscribe(&client, channel).await?;
        let (stop, stopped) = watch::channel(());
        tokio::spawn(listen(
            client,
            channel.to_owned(),
            sender.clone(),
            pubsub,
            listener,
            stopped,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                channel: channel.to_owned(),
                sender,
                _stop: stop,
            }),
        })
    }

    /// Sends `message` to every other replica listening now.
    ///
    /// # Errors
    ///
    /// The [`RedisError`] if Redis cannot be reached: the other replicas do not hear this
    /// message (they do hear [`Heard::Resubscribed`] if they lost Redis too).
    pub async fn publish(&self, message: &str) -> Result<(), RedisError> {
        let mut connection = self.inner.connection.clone();
        let payload = format!("{}:{message}", self.inner.sender);
        connection
            .publish::<_, _, ()>(&self.inner.channel, payload)
            .await
    }
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("channel", &self.inner.channel)
            .field("sender", &self.inner.sender)
            .finish_non_exhaustive()
    }
}

/// A name for this replica's messages: random, with the time and process id mixed in, so
/// that replicas started at the same microsecond with the same pid (PID 1 in containers)
/// still tell their messages apart.
fn sender_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    // Each `RandomState` is seeded from the operating system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(micros);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

async fn subscribe(client: &Client, channel: &str) -> Result<redis::aio::PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// The listener task: hears messages until the stream ends (Redis went away), then
/// subscribes again, until the `Broadcast` is dropped.
async fn listen(
    client: Client,
    channel: String,
    sender: String,
    first: redis::aio::PubSub,
    listener: impl Fn(Heard<'_>),
    mut stopped: watch::Receiver<()>,
) {
    let own = format!("{sender}:");
    let mut pubsub = Some(first);
    loop {
        let Some(subscribed) = pubsub.take() else {
            // Redis went away: wait, then subscribe again.
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
                _ = stopped.changed() => return,
            }
            match subscribe(&client, &channel).await {
                Ok(subscribed) => {
                    tracing::info!(target: "floodgate::redis", %channel, "broadcast listener subscribed again");
                    listener(Heard::Resubscribed);
                    pubsub = Some(subscribed);
                }
                Err(error) => {
                    tracing::debug!(target: "floodgate::redis", %channel, %error, "broadcast listener cannot subscribe yet");
                }
            }
            continue;
        };
        let mut messages = subscribed.into_on_message();
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx));
            let message = tokio::select! {
                message = next => message,
                _ = stopped.changed() => return,
            };
            let Some(message) = message else {
                tracing::warn!(target: "floodgate::redis", %channel, "broadcast listener lost Redis; subscribing again");
                break;
            };
            let payload = String::from_utf8_lossy(message.get_payload_bytes());
            // Another replica's message, without its sender name; this one's are skipped.
            if !payload.starts_with(own.as_str()) {
                let text = payload.split_once(':').map_or(&*payload, |(_, text)| text);
                listener(Heard::Message(text));
            }
        }
    }
}
