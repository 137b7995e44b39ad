//! The queue interface (DESIGN §2) and its backends.
//!
//! `send` returns only once the queue has durably taken the message. `receive` hands out
//! deliveries that the caller settles explicitly, after its own commit:
//! accept (done), release (back, no attempt counted), fail (back, attempt counted; past the
//! attempt limit it is dead-lettered) or reject (dead-lettered with a reason). Deliveries
//! that are never settled come back when their consumer dies.

pub mod amqp;
pub mod embedded;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::Reason;
pub use crate::domain::message::{Message, Properties, Property};
pub use amqp::{AmqpOptions, AmqpQueue, BrokerCounters, NodeRegistry};
pub use embedded::EmbeddedQueue;

/// A message handed out by a [`Receiver`], to be settled with its `tag`.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Message,
    /// Failed attempts so far (counted by cartbus, not by the broker).
    pub attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub tag: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done: remove the message.
    Accept,
    /// Back to the queue without counting an attempt (e.g. the database blinked).
    Release { delay: Duration },
    /// Back to the queue counting an attempt; dead-lettered at the attempt limit.
    Fail { delay: Duration, detail: String },
    /// Dead-letter now.
    Reject { reason: Reason, detail: String },
}

/// What the queue knows about one message id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Waiting or being processed.
    Waiting,
    DeadLettered {
        reason: String,
    },
    Absent,
    /// The backend cannot look messages up by id (brokers).
    Unknown,
}

/// A broker connection of this instance and the node it is on (a cluster has several).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct QueueConnection {
    /// What it serves: `publisher`, `hand-off publisher`, `receiver N (address)`.
    pub connection: String,
    /// The node, `amqp://host:port` (never credentials).
    pub node: String,
    /// When it connected to that node.
    pub since: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest_enqueued_at: Option<DateTime<Utc>>,
    /// The last figures read, served because this read failed.
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue cannot be reached or did not answer: a fault of the infrastructure, not
    /// of the message, and it passes.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue answered and refused this message or its address (an AMQP outcome other
    /// than accepted, or an attach the broker turned down): sending it again as it is
    /// will likely fail again.
    #[error("queue refused the message: {0}")]
    Refused(String),
    #[error("queue storage failed")]
    Storage(#[from] sqlx::Error),
    #[error("queue is shutting down")]
    Closed,
}

/// A failure of the [`AttemptLedger`], for the log.
pub type LedgerError = Box<dyn std::error::Error + Send + Sync>;

/// Where a backend that cannot count failed delivery attempts itself keeps them (a
/// classic RabbitMQ queue leaves `delivery_count` at 0). The runtime hands the AMQP
/// backend one; the queue never knows what stores it.
#[async_trait]
pub trait AttemptLedger: Send + Sync + 'static {
    /// Failed attempts recorded so far for each of `message_ids` (absent = none).
    async fn attempts(
        &self,
        source: &str,
        message_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, u32>, LedgerError>;

    /// Counts one more failed attempt.
    async fn count_failure(
        &self,
        source: &str,
        message_id: &str,
        error: &str,
    ) -> Result<(), LedgerError>;

    /// Forgets the counts of messages settled for good.
    async fn forget(&self, source: &str, message_ids: &[&str]) -> Result<(), LedgerError>;
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// `embedded`, `amqp`, …, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Returns once the message is durably stored.
    async fn send(&self, address: &str, message: Message) -> Result<(), QueueError>;

    async fn receiver(&self, address: &str) -> Result<Box<dyn Receiver>, QueueError>;

    async fn stats(&self, address: &str) -> Result<QueueStats, QueueError>;

    async fn lookup(&self, address: &str, message_id: &str) -> Result<Lookup, QueueError>;

    /// Whether the last use of the queue worked; feeds readiness.
    fn is_healthy(&self) -> bool;

    /// The broker connections open now and their nodes; none for a queue without any.
    fn connections(&self) -> Vec<QueueConnection> {
        Vec::new()
    }

    /// Closes connections cleanly at shutdown, once nothing sends any more.
    async fn shutdown(&self) {}

    /// Deletes the queue at `address`, messages and all, where the backend can (a
    /// broker through its management API); `Ok(false)` where it cannot. For scratch
    /// addresses only (a smoke run's), never the live ones.
    async fn remove(&self, _address: &str) -> Result<bool, QueueError> {
        Ok(false)
    }
}

#[async_trait]
pub trait Receiver: Send {
    /// Waits until at least one delivery is available and returns up to `max` of them;
    /// returns an empty batch once `stop` is cancelled.
    async fn receive(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Up to `max` deliveries that are available right now, without waiting (empty when
    /// there are none). The consumer takes its next batch with it while converting the
    /// current one. The default hands out nothing (no read-ahead).
    async fn receive_now(&mut self, _max: usize) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }

    /// Settles deliveries by tag, all in one go.
    async fn settle(&mut self, settlements: Vec<(u64, Settlement)>) -> Result<(), QueueError>;

    /// Gives back whatever was received and not settled.
    async fn close(self: Box<Self>) -> Result<(), QueueError>;
}

/// Stands in for a queue that could not be opened: every call fails at once, so intake
/// falls back to writing orders directly.
pub struct UnavailableQueue {
    pub kind: &'static str,
    pub reason: String,
}

#[async_trait]
impl Queue for UnavailableQueue {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn send(&self, _: &str, _: Message) -> Result<(), QueueError> {
        Err(QueueError::Unavailable(self.reason.clone()))
    }
    async fn receiver(&self, _: &str) -> Result<Box<dyn Receiver>, QueueError> {
        Err(QueueError::Unavailable(self.reason.clone()))
    }
    async fn stats(&self, _: &str) -> Result<QueueStats, QueueError> {
        Err(QueueError::Unavailable(self.reason.clone()))
    }
    async fn lookup(&self, _: &str, _: &str) -> Result<Lookup, QueueError> {
        Err(QueueError::Unavailable(self.reason.clone()))
    }
    fn is_healthy(&self) -> bool {
        false
    }
}
