//! The embedded durable queue: messages in their own SQLite file (WAL, `synchronous=FULL`).
//!
//! Every write — sends, leases, settlements — goes through one writer task that takes all
//! commands waiting at that moment and applies them in one transaction, so one fsync
//! covers a whole batch (group commit). A caller is answered only after that commit.
//! Deliveries are leases: a handed-out message stays invisible until its lease expires, so
//! a consumer that dies without settling gives it back; on start-up an instance also gives
//! back at once whatever it held before it died.
//!
//! The handle, [`EmbeddedQueue`], reads (stats, lookups, dead letters) through a small
//! pool and hands every write to the writer task ([`writer`], with the settlement SQL in
//! [`settle`]); a consumer's leases are kept by its [`EmbeddedReceiver`] ([`receiver`]).

mod receiver;
mod settle;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Lookup, Message, Queue, QueueError, QueueStats, Receiver};

pub use receiver::EmbeddedReceiver;
use writer::{Done, MAX_BATCH, Op, Policy, Reply, run_writer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/queue");

/// The queue file's migrations. A newer version may have migrated the file further (both
/// run side by side during a swap): this one keeps working with the columns it knows.
fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: MIGRATOR.migrations.clone(),
        ignore_missing: true,
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Names this instance's leases, so that a restart can give them back at once.
    pub owner: String,
    /// How long a delivery stays invisible before it is handed out again.
    pub lease: Duration,
    /// Failed attempts after which a message is dead-lettered.
    pub max_attempts: u32,
    /// How often an idle receiver looks for messages sent by other processes.
    pub poll_interval: Duration,
}

#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<(Op, Reply)>,
    reads: SqlitePool,
    shared: Arc<Shared>,
    options: EmbeddedOptions,
}

/// What the writer task and the handles share.
struct Shared {
    healthy: AtomicBool,
    arrivals: Notify,
}

impl EmbeddedQueue {
    /// Opens (creating if missing) the queue file and starts its writer task.
    pub async fn open(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedQueue, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                QueueError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let mut writer = connect.connect().await?;
        // Another process on the same file (a second instance, the partner simulator) may
        // be migrating it this very moment, and SQLite migrations take no lock: a failed
        // run is tried again, and then finds the migration applied.
        let mut tries = 0;
        while let Err(e) = migrator().run(&mut writer).await {
            tries += 1;
            if tries == 5 {
                return Err(QueueError::Unavailable(format!(
                    "queue migration failed: {e}"
                )));
            }
            tracing::debug!(error = %e, "queue migration failed; trying again");
            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
        }
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect.clone())
            .await?;

        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            arrivals: Notify::new(),
        });
        let (commands, rx) = mpsc::channel(4 * MAX_BATCH);
        let policy = Policy {
            owner: options.owner.clone(),
            lease_ms: i64::try_from(options.lease.as_millis()).unwrap_or(i64::MAX / 2),
            max_attempts: i64::from(options.max_attempts),
        };
        tokio::spawn(run_writer(
            writer,
            connect.clone(),
            rx,
            shared.clone(),
            policy,
        ));

        let queue = EmbeddedQueue {
            inner: Arc::new(Inner {
                commands,
                reads,
                shared,
                options,
            }),
        };
        // Whatever this instance held when it last stopped goes back to the queue now,
        // rather than when its leases expire.
        queue.call(Op::ReleaseOwner).await?;
        Ok(queue)
    }

    async fn call(&self, op: Op) -> Result<Done, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send((op, reply))
            .await
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Dead letters of an address, newest first; for tests and operators.
    pub async fn dead_letters(&self, address: &str) -> Result<Vec<DeadLetter>, QueueError> {
        let rows = sqlx::query(
            "SELECT message_id, reason, detail, attempts, dead_lettered_at, body
             FROM dead_letters WHERE address = $1 ORDER BY id DESC",
        )
        .bind(address)
        .fetch_all(&self.inner.reads)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| DeadLetter {
                message_id: row.get("message_id"),
                reason: row.get("reason"),
                detail: row.get("detail"),
                attempts: u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
                dead_lettered_at: from_millis(row.get("dead_lettered_at")),
                body: Bytes::from(row.get::<Vec<u8>, _>("body")),
            })
            .collect())
    }
}

#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub detail: String,
    pub attempts: u32,
    pub dead_lettered_at: DateTime<Utc>,
    pub body: Bytes,
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn send(&self, address: &str, message: Message) -> Result<(), QueueError> {
        self.call(Op::Send {
            address: address.to_string(),
            message,
        })
        .await
        .map(drop)
    }

    async fn receiver(&self, address: &str) -> Result<Box<dyn Receiver>, QueueError> {
        Ok(Box::new(EmbeddedReceiver::new(self.clone(), address)))
    }

    async fn stats(&self, address: &str) -> Result<QueueStats, QueueError> {
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE address = $1")
            .bind(address)
            .fetch_one(&self.inner.reads)
            .await?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT enqueued_at FROM messages WHERE address = $1 ORDER BY id LIMIT 1",
        )
        .bind(address)
        .fetch_optional(&self.inner.reads)
        .await?;
        Ok(QueueStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_enqueued_at: oldest.map(from_millis),
            stale: false,
        })
    }

    async fn lookup(&self, address: &str, message_id: &str) -> Result<Lookup, QueueError> {
        let waiting: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM messages WHERE message_id = $1 AND address = $2 LIMIT 1",
        )
        .bind(message_id)
        .bind(address)
        .fetch_optional(&self.inner.reads)
        .await?;
        if waiting.is_some() {
            return Ok(Lookup::Waiting);
        }
        let reason: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM dead_letters WHERE message_id = $1 AND address = $2
             ORDER BY id DESC LIMIT 1",
        )
        .bind(message_id)
        .bind(address)
        .fetch_optional(&self.inner.reads)
        .await?;
        Ok(match reason {
            Some(reason) => Lookup::DeadLettered { reason },
            None => Lookup::Absent,
        })
    }

    fn is_healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Relaxed)
    }
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
