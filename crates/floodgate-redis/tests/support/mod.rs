//! A `redis-server` of the test's own on a free loopback port, killed when dropped, and a
//! client clock the test sets.
#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use floodgate_redis::RedisStore;

/// How long a server may take to answer `PING` after it was started.
const STARTUP: Duration = Duration::from_secs(5);

/// A running (or stopped, between [`stop`](Self::stop) and [`start`](Self::start))
/// `redis-server` without persistence.
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or returns `None` after printing why the test is skipped when
    /// `redis-server` is not on `PATH`. Under CI (`CI=true`) a missing server is a failure.
    pub(crate) fn new() -> Option<Self> {
        if let Err(error) = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is required under CI but could not be run: {error}"
            );
            if error.kind() == ErrorKind::NotFound {
                println!(
                    "skipping: redis-server not found on PATH (install redis-server to run these tests)"
                );
                return None;
            }
            panic!("could not run redis-server: {error}");
        }
        // A free port can be taken by someone else between our probe and the server's bind:
        // try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut server = Self {
                port: free_port(),
                child: None,
            };
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for the test's own commands (`INFO`, `PTTL`, `SCRIPT FLUSH` …).
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
            .expect("the test's redis-server accepts connections")
    }

    /// Kills the server (SIGKILL, as a crash or an outage would).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (it has no persistence).
    pub(crate) fn start(&mut self) {
        if let Err(error) = self.try_start() {
            panic!(
                "redis-server did not restart on port {}: {error}",
                self.port
            );
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("spawn: {error}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("no answer to PING within {STARTUP:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200))
        else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on now: the OS's pick for a listener we close at once.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("the OS hands out a loopback port")
}

/// A second in microseconds, the unit of [`TestClock`].
pub(crate) const SECOND: u64 = 1_000_000;

/// A client clock the test sets, in microseconds since the UNIX epoch.
#[derive(Clone)]
pub(crate) struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// A clock at a round "now", so the test's times read well.
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_800_000_000 * SECOND)))
    }

    pub(crate) fn set(&self, micros: u64) {
        self.0.store(micros, Ordering::Relaxed);
    }

    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn advance(&self, micros: u64) {
        self.0.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) async fn store(&self, server: &RedisServer) -> RedisStore {
        let clock = self.clone();
        RedisStore::builder(server.url())
            .client_clock(move || UNIX_EPOCH + Duration::from_micros(clock.now()))
            .build()
            .await
            .expect("the test's Redis is up")
    }
}

/// Calls per command since the server started, from `INFO commandstats`.
pub(crate) fn command_calls(redis: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(redis)
        .expect("INFO");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}
