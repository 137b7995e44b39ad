//! The queue interface (DESIGN §2) and its backends.
//!
//! `send` returns only once the queue has durably taken the message. `receive` hands out
//! deliveries that the caller settles explicitly, after its own commit:
//! accept (done), release (back, no attempt counted), fail (back, attempt counted; past the
//! attempt limit it is dead-lettered) or reject (dead-lettered with a reason). Deliveries
//! that are never settled come back when their consumer dies.

pub mod amqp;
pub mod embedded;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use amqp::{AmqpOptions, AmqpQueue, BrokerCounters};
pub use embedded::EmbeddedQueue;

/// A typed application property, as AMQP 1.0 carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Property {
    Bool(bool),
    Int(i32),
    Long(i64),
    String(String),
}

pub type Properties = BTreeMap<String, Property>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub content_type: String,
    /// AMQP `correlation-id`: what a reply refers to (the order id of a new-order).
    pub correlation_id: Option<String>,
    /// AMQP `reply-to`: the address to answer on.
    pub reply_to: Option<String>,
    /// AMQP `subject`: the kind of message (`new-order`).
    pub subject: Option<String>,
    pub properties: Properties,
    pub body: Bytes,
}

/// A message handed out by a [`Receiver`], to be settled with its `tag`.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Message,
    /// Failed attempts so far (counted by cartbus, not by the broker).
    pub attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub tag: u64,
}

/// Why a message was dead-lettered; stable strings, shown to operators and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Same cart_id, different payload from the order that exists.
    Conflict,
    /// A message schema version this consumer does not know.
    UnknownSchema,
    /// A message that cannot be decoded or holds an invalid cart.
    Invalid,
    /// Failed more often than the attempt limit allows.
    MaxAttempts,
    /// A partner reply whose signature is missing or wrong, or whose partner has no
    /// secret configured.
    BadSignature,
    /// A partner reply about an order that does not exist.
    UnknownOrder,
    /// A partner reply about an order assigned to another partner.
    WrongPartner,
    /// The payment endpoint was called and whether it captured is not known: never
    /// called again; a person checks with the payment service and resolves it.
    PaymentUnknown,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Conflict => "conflict",
            DeadLetterReason::UnknownSchema => "unknown-schema",
            DeadLetterReason::Invalid => "invalid",
            DeadLetterReason::MaxAttempts => "max-attempts",
            DeadLetterReason::BadSignature => "bad-signature",
            DeadLetterReason::UnknownOrder => "unknown-order",
            DeadLetterReason::WrongPartner => "wrong-partner",
            DeadLetterReason::PaymentUnknown => "payment-unknown",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    Reject {
        reason: DeadLetterReason,
        detail: String,
    },
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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest_enqueued_at: Option<DateTime<Utc>>,
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

    /// Closes connections cleanly at shutdown, once nothing sends any more.
    async fn shutdown(&self) {}
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
