//! Every SQL statement of the service, behind [`Store`]. Handlers never build SQL.
//!
//! The statements use `$N` placeholders and `RETURNING`, which SQLite (3.35+) and
//! PostgreSQL both accept, so moving to PostgreSQL changes the pool type and the key's type
//! in the migration, not the queries.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

/// A stored item, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub(crate) struct Item {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) price: Option<f64>,
}

/// The fields a client sends to create or replace an item, already validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ItemFields {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) price: Option<f64>,
}

/// One page of the listing and the number of items in all.
#[derive(Debug, Serialize)]
pub(crate) struct Page {
    pub(crate) items: Vec<Item>,
    pub(crate) total: i64,
    pub(crate) limit: u32,
    pub(crate) offset: u64,
}

/// The database: a connection pool and the statements run on it.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `url`, in WAL mode, and brings its schema
    /// up to date with the embedded migrations.
    ///
    /// `sqlite::memory:` gives a database that lives as long as the pool. It gets one
    /// connection, kept open: the database vanishes with its last connection, and
    /// connections sharing one in memory fail with `SQLITE_LOCKED` instead of waiting.
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL: readers never wait for the writer, and a commit is one append.
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable against a process crash in WAL mode; FULL would also
            // survive power loss at the price of an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            // Writers queue on SQLite's lock instead of failing with SQLITE_BUSY; several
            // replicas may share one file.
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(max_connections.max(1))
        }
        .connect_with(options)
        .await?;
        sqlx::migrate!("examples/items_service/migrations")
            .run(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// Up to `limit` items from `offset` in id order, and how many there are in all.
    pub(crate) async fn list(&self, limit: u32, offset: u64) -> Result<Page, sqlx::Error> {
        // One transaction, so that the page and the total describe the same snapshot.
        let mut transaction = self.pool.begin().await?;
        let items = sqlx::query_as::<_, Item>(
            "SELECT id, name, description, price FROM items ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&mut *transaction)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(Page {
            items,
            total,
            limit,
            offset,
        })
    }

    /// The item with `id`, if there is one.
    pub(crate) async fn get(&self, id: i64) -> Result<Option<Item>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, description, price FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Stores a new item and returns it with its id.
    pub(crate) async fn create(&self, fields: &ItemFields) -> Result<Item, sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO items (name, description, price) VALUES ($1, $2, $3) \
             RETURNING id, name, description, price",
        )
        .bind(&fields.name)
        .bind(&fields.description)
        .bind(fields.price)
        .fetch_one(&self.pool)
        .await
    }

    /// Replaces the fields of item `id`; `None` when there is no such item.
    pub(crate) async fn update(
        &self,
        id: i64,
        fields: &ItemFields,
    ) -> Result<Option<Item>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE items SET name = $1, description = $2, price = $3 WHERE id = $4 \
             RETURNING id, name, description, price",
        )
        .bind(&fields.name)
        .bind(&fields.description)
        .bind(fields.price)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Deletes item `id`; `false` when there was no such item.
    pub(crate) async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        let result = sqlx::query("DELETE FROM items WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Checks that the database answers.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    /// Waits for the connections in use to come back, then closes them all.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}
