//! The writer task and the commands it takes. Once the queue is open, every send, lease
//! and settlement is written here: the task takes all commands waiting on its channel (up
//! to [`MAX_BATCH`]), applies them in one `BEGIN IMMEDIATE` transaction and answers each
//! caller only after the commit. Commits that carry a promise (a send, an attempt count,
//! a dead letter) are made with `synchronous=FULL`, the others with `NORMAL`. A failed
//! write marks the queue unhealthy and, if the connection is broken, opens a fresh one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::settle::settle_all;
use super::{Shared, from_millis};
use crate::queue::{Delivery, Message, Properties, QueueError, Settlement};

/// Most commands applied in one transaction.
pub(super) const MAX_BATCH: usize = 1024;
/// SQLite allows 32,766 bound parameters; a send row binds 8.
const SEND_ROWS_PER_INSERT: usize = 512;

pub(super) enum Op {
    Send { address: String, message: Message },
    Lease { address: String, max: usize },
    Settle(Vec<(i64, i64, Settlement)>),
    ReleaseOwner,
}

pub(super) enum Done {
    Sent,
    Leased(Vec<Delivery>, i64),
    Settled,
}

pub(super) type Reply = oneshot::Sender<Result<Done, QueueError>>;

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
pub(super) struct Policy {
    pub(super) owner: String,
    pub(super) lease_ms: i64,
    pub(super) max_attempts: i64,
}

pub(super) async fn run_writer(
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
