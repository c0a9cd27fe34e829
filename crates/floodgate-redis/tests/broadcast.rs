//! `Broadcast` between replicas on a real `redis-server`.

mod support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use floodgate_redis::{Broadcast, Heard};
use support::RedisServer;

/// What one replica's listener heard, as text (`*` for a resubscription).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn listener(&self) -> impl Fn(Heard<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |heard| {
            let entry = match heard {
                Heard::Message(text) => text.to_owned(),
                Heard::Resubscribed => "*".to_owned(),
                _ => "?".to_owned(),
            };
            log.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry);
        }
    }

    fn entries(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (bounded) until the log holds `count` entries: delivery goes through Redis.
    async fn wait_for(&self, count: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.entries().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.entries()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_replica_hears_a_message_and_the_sender_does_not() {
    let Some(server) = RedisServer::new() else {
        return;
    };
    let (a, b, c) = (Log::default(), Log::default(), Log::default());
    let replica_a = Broadcast::connect(&server.url(), "test:invalidate", a.listener())
        .await
        .expect("Redis is up");
    let replica_b = Broadcast::connect(&server.url(), "test:invalidate", b.listener())
        .await
        .expect("Redis is up");
    let _replica_c = Broadcast::connect(&server.url(), "test:invalidate", c.listener())
        .await
        .expect("Redis is up");
    replica_a.publish("/items").await.expect("published");
    replica_a
        .publish("/items/7: with a colon")
        .await
        .expect("published");
    assert_eq!(b.wait_for(2).await, ["/items", "/items/7: with a colon"]);
    assert_eq!(c.wait_for(2).await, ["/items", "/items/7: with a colon"]);
    // Redis delivers a channel's messages to each subscriber in order: once A hears B's
    // later message, it has already passed over its own two.
    replica_b.publish("/from-b").await.expect("published");
    assert_eq!(
        a.wait_for(1).await,
        ["/from-b"],
        "a replica does not hear itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_lost_redis_resubscribes_and_says_so() {
    let Some(mut server) = RedisServer::new() else {
        return;
    };
    let heard = Log::default();
    let listener = Broadcast::connect(&server.url(), "test:resubscribe", heard.listener())
        .await
        .expect("Redis is up");
    let publisher = Broadcast::connect(&server.url(), "test:resubscribe", |_| {})
        .await
        .expect("Redis is up");
    server.stop();
    assert!(
        publisher.publish("lost").await.is_err(),
        "no Redis, no delivery: said so"
    );
    server.start();
    assert_eq!(
        heard.wait_for(1).await,
        ["*"],
        "told to drop what it may have missed"
    );
    // The publisher's connection comes back by itself too.
    let mut delivered = false;
    for _ in 0..100 {
        if publisher.publish("/after").await.is_ok() {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered);
    assert_eq!(heard.wait_for(2).await, ["*", "/after"]);
    drop(listener);
}
