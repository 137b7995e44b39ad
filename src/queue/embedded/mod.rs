//! The embedded durable queue: messages in their own SQLite file (WAL, `synchronous=FULL`).
//!
//! Every write — sends, leases, settlements — goes through one writer task that takes all
//! commands waiting at that moment and applies them in one transaction, so one fsync
//! covers a whole batch (group commit). A caller is answered only after that commit.
//! Deliveries are leases: a handed-out message stays invisible until its lease expires, so
//! a consumer that dies without settling gives it back; on start-up an instance also gives
//! back at once whatever it held before it died.

mod receiver;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    Delivery, Lookup, Message, Properties, Queue, QueueError, QueueStats, Reason, Receiver,
    Settlement,
};

pub use receiver::EmbeddedReceiver;

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

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;
/// SQLite allows 32,766 bound parameters; a send row binds 8.
const SEND_ROWS_PER_INSERT: usize = 512;

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

enum Op {
    Send { address: String, message: Message },
    Lease { address: String, max: usize },
    Settle(Vec<(i64, i64, Settlement)>),
    ReleaseOwner,
}

enum Done {
    Sent,
    Leased(Vec<Delivery>, i64),
    Settled,
}

type Reply = oneshot::Sender<Result<Done, QueueError>>;

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

impl Op {
    fn needs_fsync(&self) -> bool {
        match self {
            Op::Send { .. } => true,
            Op::Settle(items) => items.iter().any(|(_, _, settlement)| {
                matches!(
                    settlement,
                    Settlement::Fail { .. } | Settlement::Reject { .. }
                )
            }),
            Op::Lease { .. } | Op::ReleaseOwner => false,
        }
    }
}

/// The writer's fixed rules.
struct Policy {
    owner: String,
    lease_ms: i64,
    max_attempts: i64,
}

async fn run_writer(
    mut conn: SqliteConnection,
    connect: SqliteConnectOptions,
    mut commands: mpsc::Receiver<(Op, Reply)>,
    shared: Arc<Shared>,
    policy: Policy,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut durable = true;
    while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.drain(..).unzip();
        let sent = ops.iter().any(|op| matches!(op, Op::Send { .. }));
        // Only what a caller was promised must survive a power cut: sends (a 202) and
        // attempt counts and dead letters. A lease, an accept or a release that is lost
        // only means the message is handed out again, which the consumer's idempotency
        // makes harmless; those commits skip the fsync (WAL + synchronous=NORMAL still
        // survives a process crash). The batched drain's one fsync is then the orders
        // commit.
        let needs_fsync = ops.iter().any(Op::needs_fsync);
        let mode = if needs_fsync == durable {
            Ok(())
        } else {
            let pragma = if needs_fsync {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            sqlx::query(pragma)
                .execute(&mut conn)
                .await
                .map(|_| durable = needs_fsync)
        };
        // Never acknowledge a send that was committed without its fsync.
        let applied = match mode {
            Ok(()) => apply(&mut conn, &ops, &policy).await,
            Err(e) if needs_fsync => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot relax the queue's fsync mode; committing with it");
                apply(&mut conn, &ops, &policy).await
            }
        };
        match applied {
            Ok(done) => {
                shared.healthy.store(true, Ordering::Relaxed);
                for (reply, done) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(done));
                }
                if sent {
                    shared.arrivals.notify_waiters();
                }
            }
            Err(e) => {
                shared.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, commands = replies.len(), "embedded queue write failed");
                for reply in replies {
                    let _ = reply.send(Err(QueueError::Unavailable(format!(
                        "embedded queue write failed: {e}"
                    ))));
                }
                if !crate::sqlite::connection_is_sound(&mut conn)
                    .await
                    .unwrap_or(false)
                {
                    match connect.connect().await {
                        Ok(fresh) => {
                            conn = fresh;
                            durable = true;
                            tracing::warn!(
                                "embedded queue connection replaced after a failed write"
                            );
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reopen the embedded queue file; trying again with the next write")
                        }
                    }
                }
            }
        }
    }
}

/// Applies a batch of commands in one transaction; the results are in command order.
async fn apply(
    conn: &mut SqliteConnection,
    ops: &[Op],
    policy: &Policy,
) -> Result<Vec<Done>, sqlx::Error> {
    let now = Utc::now().timestamp_millis();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;

    let sends: Vec<(&str, &Message)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Send { address, message } => Some((address.as_str(), message)),
            _ => None,
        })
        .collect();
    for chunk in sends.chunks(SEND_ROWS_PER_INSERT) {
        insert_messages(&mut tx, chunk, now).await?;
    }

    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        done.push(match op {
            Op::Send { .. } => Done::Sent,
            Op::Lease { address, max } => {
                let token: i64 = rand::random();
                let until = now + policy.lease_ms;
                let leased =
                    lease(&mut tx, address, *max, &policy.owner, token, now, until).await?;
                Done::Leased(leased, token)
            }
            Op::Settle(items) => {
                settle_all(&mut tx, items, policy.max_attempts, now).await?;
                Done::Settled
            }
            Op::ReleaseOwner => {
                sqlx::query(
                    "UPDATE messages SET visible_at = $1, lease_owner = NULL, lease_token = NULL
                     WHERE lease_owner = $2",
                )
                .bind(now)
                .bind(&policy.owner)
                .execute(&mut *tx)
                .await?;
                Done::Settled
            }
        });
    }
    tx.commit().await?;
    Ok(done)
}

async fn insert_messages(
    conn: &mut SqliteConnection,
    rows: &[(&str, &Message)],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO messages (address, message_id, content_type, correlation_id, reply_to, subject,
             properties, body, enqueued_at, visible_at, attempts) ",
    );
    insert.push_values(rows, |mut row, (address, message)| {
        let properties =
            serde_json::to_string(&message.properties).expect("properties always serialise");
        row.push_bind(*address)
            .push_bind(message.message_id.as_str())
            .push_bind(message.content_type.as_str())
            .push_bind(message.correlation_id.as_deref())
            .push_bind(message.reply_to.as_deref())
            .push_bind(message.subject.as_deref())
            .push_bind(properties)
            .push_bind(message.body.as_ref())
            .push_bind(now)
            .push_bind(now)
            .push_bind(0_i64);
    });
    insert.build().persistent(false).execute(conn).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn lease(
    conn: &mut SqliteConnection,
    address: &str,
    max: usize,
    owner: &str,
    token: i64,
    now: i64,
    until: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE messages
         SET visible_at = $1, lease_owner = $2, lease_token = $3, deliveries = deliveries + 1
         WHERE id IN (SELECT id FROM messages WHERE address = $4 AND visible_at <= $5
                      ORDER BY id LIMIT $6)
         RETURNING id, message_id, content_type, correlation_id, reply_to, subject, properties,
                   body, enqueued_at, attempts",
    )
    .bind(until)
    .bind(owner)
    .bind(token)
    .bind(address)
    .bind(now)
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut deliveries: Vec<Delivery> = rows
        .into_iter()
        .map(|row| {
            let properties: String = row.get("properties");
            let properties: Properties = serde_json::from_str(&properties).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored message properties unreadable; delivering without them");
                Properties::new()
            });
            Delivery {
                message: Message {
                    message_id: row.get("message_id"),
                    content_type: row.get("content_type"),
                    correlation_id: row.get("correlation_id"),
                    reply_to: row.get("reply_to"),
                    subject: row.get("subject"),
                    properties,
                    body: Bytes::from(row.get::<Vec<u8>, _>("body")),
                },
                attempts: u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
                enqueued_at: from_millis(row.get("enqueued_at")),
                tag: u64::try_from(row.get::<i64, _>("id")).unwrap_or(0),
            }
        })
        .collect();
    deliveries.sort_by_key(|d| d.tag);
    Ok(deliveries)
}

/// Most ids in one `IN (…)` list (SQLite allows 32,766 bind parameters).
const IDS_PER_STATEMENT: usize = 500;

/// Settles a consumer's batch: accepts (and releases with the same delay) of one lease in
/// one statement per few hundred, not one round trip each; failures and rejections, which
/// are rare and carry their own details, one by one.
async fn settle_all(
    conn: &mut SqliteConnection,
    items: &[(i64, i64, Settlement)],
    max_attempts: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut accepts: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut releases: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for (id, token, settlement) in items {
        match settlement {
            Settlement::Accept => accepts.entry(*token).or_default().push(*id),
            Settlement::Release { delay } => releases
                .entry((*token, now + millis(*delay)))
                .or_default()
                .push(*id),
            other => settle(conn, *id, *token, other, max_attempts, now).await?,
        }
    }
    let mut ignored = 0;
    for (token, ids) in accepts {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut delete = sqlx::QueryBuilder::new("DELETE FROM messages WHERE lease_token = ");
            delete.push_bind(token).push(" AND id IN (");
            let mut list = delete.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            delete.push(")");
            let done = delete.build().execute(&mut *conn).await?.rows_affected();
            ignored += chunk.len() as u64 - done;
        }
    }
    for ((token, visible_at), ids) in releases {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut update = sqlx::QueryBuilder::new(
                "UPDATE messages SET lease_owner = NULL, lease_token = NULL, visible_at = ",
            );
            update
                .push_bind(visible_at)
                .push(" WHERE lease_token = ")
                .push_bind(token)
                .push(" AND id IN (");
            let mut list = update.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            update.push(")");
            let done = update.build().execute(&mut *conn).await?.rows_affected();
            ignored += chunk.len() as u64 - done;
        }
    }
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "settlements ignored: their leases had expired and moved on"
        );
    }
    Ok(())
}

/// Settles one leased message. A delivery whose lease was lost (expired and handed out
/// again) is left alone: its new holder settles it.
async fn settle(
    conn: &mut SqliteConnection,
    id: i64,
    token: i64,
    settlement: &Settlement,
    max_attempts: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let held = match settlement {
        Settlement::Accept => {
            sqlx::query("DELETE FROM messages WHERE id = $1 AND lease_token = $2")
                .bind(id)
                .bind(token)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0
        }
        Settlement::Release { delay } => {
            sqlx::query(
                "UPDATE messages SET visible_at = $3, lease_owner = NULL, lease_token = NULL
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .bind(now + millis(*delay))
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0
        }
        Settlement::Fail { delay, detail } => {
            let attempts: Option<i64> = sqlx::query_scalar(
                "UPDATE messages SET attempts = attempts + 1, last_error = $3, visible_at = $4,
                        lease_owner = NULL, lease_token = NULL
                 WHERE id = $1 AND lease_token = $2
                 RETURNING attempts",
            )
            .bind(id)
            .bind(token)
            .bind(detail)
            .bind(now + millis(*delay))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(attempts) = attempts
                && attempts >= max_attempts
            {
                let detail = format!("failed {attempts} times; last: {detail}");
                dead_letter(conn, id, None, Reason::MaxAttempts, &detail, now).await?;
            }
            attempts.is_some()
        }
        Settlement::Reject { reason, detail } => {
            dead_letter(conn, id, Some(token), *reason, detail, now).await?
        }
    };
    if !held {
        tracing::warn!(id, "settlement ignored: the lease had expired and moved on");
    }
    Ok(())
}

/// Moves a message to `dead_letters`; with a token, only if the lease is still held.
async fn dead_letter(
    conn: &mut SqliteConnection,
    id: i64,
    token: Option<i64>,
    reason: Reason,
    detail: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "INSERT INTO dead_letters (address, message_id, content_type, properties, body,
                                   enqueued_at, attempts, reason, detail, dead_lettered_at)
         SELECT address, message_id, content_type, properties, body, enqueued_at, attempts,
                $3, $4, $5
         FROM messages WHERE id = $1 AND ($2 IS NULL OR lease_token = $2)",
    )
    .bind(id)
    .bind(token)
    .bind(reason.as_str())
    .bind(detail)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if moved {
        sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
