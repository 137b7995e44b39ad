//! A consumer's receiver: its own connection, session and receiver link, with credit
//! granted by hand (`CreditMode::Manual`) so that at most `prefetch` deliveries are ever
//! held or on their way. Never `drain()`, `set_credit(0)` or `modify`: each breaks a
//! RabbitMQ 3.10 session (AMQP-NOTES.md). Pausing is simply not granting more credit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::link::delivery::{Delivery as AmqpDelivery, DeliveryInfo};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver as LinkReceiver, Session};
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    AmqpOptions, CONTROL_TIMEOUT, NodeRegistry, attach_failed, connect, convert, durable_source,
};
use crate::queue::AttemptLedger;
use crate::queue::{Delivery, Message, QueueError, Receiver, Settlement};

struct Held {
    info: DeliveryInfo,
    message_id: String,
    /// Whether `delivery_attempts` has a row for it (to be cleaned up when it is done).
    counted: bool,
}

/// A receiver's entry in the node registry, removed when the receiver goes.
struct Registered {
    name: String,
    nodes: NodeRegistry,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.nodes.disconnected(&self.name);
    }
}

pub(super) struct AmqpReceiver {
    // Held for its `Drop`: the registry forgets this receiver when it goes.
    _registered: Registered,
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    link: LinkReceiver,
    address: String,
    prefetch: u32,
    ledger: Arc<dyn AttemptLedger>,
    held: HashMap<u64, Held>,
    /// Released-with-delay deliveries: kept (and so not redelivered) until their time.
    delayed: Vec<(Instant, u64)>,
    next_tag: u64,
    /// A failure met while filling a batch, reported by the next `receive`.
    failed: Option<QueueError>,
}

impl AmqpReceiver {
    pub(super) async fn open(
        options: &AmqpOptions,
        ledger: Arc<dyn AttemptLedger>,
        address: &str,
        n: u64,
    ) -> Result<AmqpReceiver, QueueError> {
        let container_id = format!("cartbus-{}-consumer-{n}", options.instance);
        // Receivers start on different nodes (spread over a cluster), and one reopened
        // after a loss (a new `n`) starts on the next.
        let start = usize::try_from(n).unwrap_or(0);
        let (mut connection, node) = connect(&options.broker, &container_id, start).await?;
        let attach = async {
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|e| QueueError::Unavailable(format!("cannot begin a session: {e}")))?;
            let link = LinkReceiver::builder()
                .name(format!("{container_id}:{address}"))
                .source(durable_source(address))
                .credit_mode(CreditMode::Manual)
                .attach(&mut session)
                .await
                .map_err(|e| {
                    QueueError::Unavailable(attach_failed("a receiver to", address, &e))
                })?;
            Ok::<_, QueueError>((session, link))
        };
        let attached = tokio::time::timeout(CONTROL_TIMEOUT, attach)
            .await
            .unwrap_or_else(|_| Err(QueueError::Unavailable("receiver attach timed out".into())));
        let (session, link) = match attached {
            Ok(parts) => parts,
            Err(e) => {
                let _ = tokio::time::timeout(CONTROL_TIMEOUT, connection.close()).await;
                return Err(e);
            }
        };
        let name = format!("receiver {n} ({address})");
        let node = options.broker.nodes[node].endpoint();
        tracing::info!(connection = %name, %node, "broker receiver attached");
        options.nodes.connected(&name, &node);
        Ok(AmqpReceiver {
            _registered: Registered {
                name,
                nodes: options.nodes.clone(),
            },
            connection,
            session,
            link,
            address: address.to_string(),
            prefetch: options.broker.prefetch.max(1),
            ledger,
            held: HashMap::new(),
            delayed: Vec::new(),
            next_tag: 0,
            failed: None,
        })
    }

    /// Grants credit so that held + on-their-way stays at most `prefetch`, and only once
    /// the last grant is used up. RabbitMQ answers each grant with its own delivery count,
    /// which fe2o3 adopts at once; granting again while transfers sit unread would count
    /// those twice, let the broker send more than fe2o3 allows (`TransferLimitExceeded`)
    /// and strand them unacknowledged. One round trip per `prefetch` messages is the price.
    async fn top_up(&mut self) -> Result<(), QueueError> {
        let room = self.prefetch.saturating_sub(self.held.len() as u32);
        if room > 0 && self.link.credit() == 0 {
            self.link
                .set_credit(room)
                .await
                .map_err(|e| QueueError::Unavailable(format!("cannot grant credit: {e}")))?;
        }
        Ok(())
    }

    /// A received delivery, or `None` when the link is gone. A message fe2o3 cannot decode
    /// (say, a list in its application properties) is still a delivery: handed out with
    /// the decode error as its body, the consumer dead-letters it as invalid, recorded,
    /// instead of it blocking the queue or sitting unacknowledged.
    fn accept_received(
        &mut self,
        received: Result<AmqpDelivery<Body<Value>>, RecvError>,
    ) -> Result<Delivery, QueueError> {
        match received {
            Ok(delivery) => {
                let (info, message) = delivery.into_parts();
                Ok(self.take(info, convert::from_amqp(message)))
            }
            Err(RecvError::MessageDecode(e)) => {
                tracing::warn!(error = %e.source, "undecodable message; it will be dead-lettered");
                let message = Message {
                    message_id: String::new(),
                    content_type: String::new(),
                    properties: Default::default(),
                    body: Bytes::from(format!("undecodable AMQP message: {}", e.source)),
                    ..Default::default()
                };
                Ok(self.take(e.info, message))
            }
            Err(RecvError::TransferLimitExceeded) => {
                tracing::error!(
                    "the broker sent more than the credit granted; reconnecting to get the excess redelivered"
                );
                Err(lost("transfer limit exceeded"))
            }
            Err(e) => Err(lost(e)),
        }
    }

    fn take(&mut self, info: DeliveryInfo, message: Message) -> Delivery {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.held.insert(
            tag,
            Held {
                info,
                message_id: message.message_id.clone(),
                counted: false,
            },
        );
        Delivery {
            message,
            attempts: 0,
            // The broker does not say; the envelope carries the cart's own time.
            enqueued_at: Utc::now(),
            tag,
        }
    }

    /// Fills in the attempt counts cartbus keeps. If the database cannot say, the
    /// deliveries go out with 0: the count is a limit on retries, and a database that is
    /// down fails the conversion (a release, not an attempt) anyway.
    async fn count_attempts(&mut self, batch: &mut [Delivery]) {
        let ids: Vec<&str> = batch
            .iter()
            .map(|d| d.message.message_id.as_str())
            .collect();
        match self.ledger.attempts(&self.address, &ids).await {
            Ok(counts) => {
                for delivery in batch.iter_mut() {
                    if let Some(n) = counts.get(&delivery.message.message_id) {
                        delivery.attempts = *n;
                        if let Some(held) = self.held.get_mut(&delivery.tag) {
                            held.counted = true;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read delivery attempt counts"),
        }
    }

    async fn release_due(&mut self) -> Result<(), QueueError> {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        let infos: Vec<DeliveryInfo> = due
            .into_iter()
            .filter_map(|(_, tag)| self.held.remove(&tag).map(|h| h.info))
            .collect();
        if !infos.is_empty() {
            self.link.release_all(infos).await.map_err(lost)?;
        }
        Ok(())
    }
}

fn lost(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("receiver link lost: {e}"))
}

#[async_trait::async_trait]
impl Receiver for AmqpReceiver {
    async fn receive(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Vec<Delivery>, QueueError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let first = loop {
            self.release_due().await?;
            self.top_up().await?;
            let next_due = self.delayed.iter().map(|(at, _)| *at).min();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                // A stop wins over a delivery that is ready at the same moment.
                biased;
                _ = stop.cancelled() => return Ok(Vec::new()),
                _ = tokio::time::sleep_until(next_due.unwrap_or(far)) => continue,
                received = self.link.recv::<Body<Value>>() => break received,
            }
        };
        let mut batch = vec![self.accept_received(first)?];
        // Take what has already arrived, without waiting for more (recv is cancel-safe).
        while batch.len() < max {
            let Some(received) = self.link.recv::<Body<Value>>().now_or_never() else {
                break;
            };
            match self.accept_received(received) {
                Ok(delivery) => batch.push(delivery),
                // Hand out what we have; the next receive reports the failure, so the
                // consumer reconnects, which gives everything unsettled back.
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        // Ask for the next batch now, while this one is converted: with a prefetch above
        // the batch size it is on its way (or already here) when the consumer comes back,
        // instead of one broker round trip per batch. `top_up` grants only once every
        // granted transfer was read (fe2o3 counts credit down in `recv`), so none sits
        // unread when the grant goes out.
        if self.failed.is_none()
            && let Err(e) = self.top_up().await
        {
            self.failed = Some(e);
        }
        self.count_attempts(&mut batch).await;
        Ok(batch)
    }

    async fn settle(&mut self, settlements: Vec<(u64, Settlement)>) -> Result<(), QueueError> {
        let mut accept = Vec::new();
        let mut release_now = Vec::new();
        let mut done_ids = Vec::new();
        for (tag, settlement) in settlements {
            let Some(held) = self.held.get(&tag) else {
                tracing::warn!(tag, "settlement for a delivery this receiver does not hold");
                continue;
            };
            match settlement {
                Settlement::Accept => {
                    let held = self.held.remove(&tag).expect("checked above");
                    if held.counted {
                        done_ids.push(held.message_id);
                    }
                    accept.push(held.info);
                }
                Settlement::Release { delay } if delay.is_zero() => {
                    release_now.push(self.held.remove(&tag).expect("checked above").info);
                }
                Settlement::Release { delay } => self.delayed.push((Instant::now() + delay, tag)),
                Settlement::Fail { delay, detail } => {
                    if let Err(e) = self
                        .ledger
                        .count_failure(&self.address, &held.message_id, &detail)
                        .await
                    {
                        tracing::warn!(error = %e, message_id = %held.message_id, "cannot count a failed attempt");
                    }
                    if let Some(held) = self.held.get_mut(&tag) {
                        held.counted = true;
                    }
                    self.delayed.push((Instant::now() + delay, tag));
                }
                Settlement::Reject { reason, detail } => {
                    let held = self.held.remove(&tag).expect("checked above");
                    // Already in cartbus's dead_letters (the consumer records before it
                    // rejects); the broker dead-letters it too when a DLX policy exists.
                    let error = AmqpError::new(
                        ErrorCondition::Custom(Symbol::from(format!("cartbus:{reason}"))),
                        Some(detail),
                        None,
                    );
                    self.link.reject(held.info, error).await.map_err(lost)?;
                    if held.counted {
                        done_ids.push(held.message_id);
                    }
                }
            }
        }
        if !accept.is_empty() {
            self.link.accept_all(accept).await.map_err(lost)?;
        }
        if !release_now.is_empty() {
            self.link.release_all(release_now).await.map_err(lost)?;
        }
        let ids: Vec<&str> = done_ids.iter().map(String::as_str).collect();
        if let Err(e) = self.ledger.forget(&self.address, &ids).await {
            tracing::warn!(error = %e, "cannot clear delivery attempt counts");
        }
        Ok(())
    }

    /// Gives back everything held, then ends the session and connection (which also
    /// returns anything the broker sent that was never received).
    async fn close(mut self: Box<Self>) -> Result<(), QueueError> {
        let infos: Vec<DeliveryInfo> = self.held.drain().map(|(_, h)| h.info).collect();
        self.delayed.clear();
        let released = if infos.is_empty() {
            Ok(())
        } else {
            tokio::time::timeout(CONTROL_TIMEOUT, self.link.release_all(infos))
                .await
                .map_err(|_| lost("release timed out"))
                .and_then(|r| r.map_err(lost))
        };
        let AmqpReceiver {
            mut connection,
            mut session,
            link,
            ..
        } = *self;
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, link.detach()).await;
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, session.end()).await;
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, connection.close()).await;
        released
    }
}
