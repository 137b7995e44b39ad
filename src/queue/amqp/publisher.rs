//! The publishing supervisor: one task owns the connection, its session and one sender
//! link per address. Requests come in over a bounded channel; each is sent with
//! `send_batchable` (the transfer goes out at once, the outcome is awaited later), so up
//! to `window` sends are unsettled together and each request waits for its own outcome.
//!
//! A send in flight when the broker dies never resolves on its own (AMQP-NOTES.md), so
//! every outcome is raced against a timeout and against the connection closing; when the
//! connection goes, every waiting request is answered "unknown" at once and goes direct.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::{Sender, Session};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use crate::backoff::Backoff;

use super::{
    AmqpOptions, BrokerCounters, CONTROL_TIMEOUT, attach_failed, connect, convert, durable_target,
};
use crate::queue::{Message, QueueError};

/// This many sends in a row without an outcome in time means the broker hangs: drop the
/// connection and reconnect rather than let every request wait out its timeout.
const HUNG_AFTER_TIMEOUTS: u32 = 3;
/// A connection that lasted this long before it was lost moves to the next node at once.
const LASTED: Duration = Duration::from_secs(1);
/// How long closing a lost connection may take before it is simply dropped.
const LOST_CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) struct Publish {
    pub address: String,
    pub message: Message,
    pub reply: oneshot::Sender<Result<(), QueueError>>,
}

/// What the supervisor tells the rest of the service: readiness, metrics, fail-fast.
#[derive(Debug)]
pub(super) struct PublisherState {
    connected: AtomicBool,
    stopped: AtomicBool,
    stopped_signal: Notify,
    connects: Counter,
    losses: Counter,
}

impl PublisherState {
    pub(super) fn new(counters: &BrokerCounters) -> PublisherState {
        PublisherState {
            connected: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stopped_signal: Notify::new(),
            connects: counters.connects.clone(),
            losses: counters.losses.clone(),
        }
    }

    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(super) async fn wait_stopped(&self, limit: Duration) {
        let stopped = async {
            loop {
                let notified = self.stopped_signal.notified();
                if self.stopped.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, stopped).await;
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }
}

type InFlight = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    oneshot::Sender<Result<(), QueueError>>,
                    Result<Result<Outcome, SendError>, tokio::time::error::Elapsed>,
                ),
            > + Send,
    >,
>;

/// Why a connection's service ended.
enum End {
    Stopped,
    Lost(String),
}

pub(super) async fn supervise(
    options: Arc<AmqpOptions>,
    mut requests: mpsc::Receiver<Publish>,
    state: Arc<PublisherState>,
    stop: CancellationToken,
) {
    let connection = options.publisher;
    // Reconnects: doubling from 200 ms to 5 s, jittered so that many instances of one
    // broker do not all come back at once. The cap is what a broker back from an outage
    // waits at most to be used again (15 s before the two-site drill measured it); a
    // refused connection every few seconds per instance costs the broker nothing.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // The node tried first: after a loss, the one after the node that was lost.
    let mut start = 0;
    while !stop.is_cancelled() {
        match Publisher::open(&options, start).await {
            Ok(mut publisher) => {
                let index = publisher.node;
                let node = options.broker.nodes[index].endpoint();
                state.connects.inc();
                state.set_connected(true);
                options.nodes.connected(connection, &node);
                backoff.reset();
                tracing::info!(%connection, %node, address = %options.cart_address, "broker connected");
                let opened = std::time::Instant::now();
                let end = publisher.serve(&mut requests, &stop, &options).await;
                state.set_connected(false);
                options.nodes.disconnected(connection);
                publisher.close(matches!(end, End::Stopped)).await;
                match end {
                    End::Stopped => break,
                    End::Lost(why) => {
                        state.losses.inc();
                        // The next try starts at the next node: at once when there is
                        // another and this connection had lasted (its node went), else after
                        // the backoff (a connection lost as soon as made must not spin).
                        start = index + 1;
                        tracing::warn!(%connection, %node, reason = %why, "broker connection lost; checkouts go direct until a node answers");
                        if options.broker.nodes.len() > 1 && opened.elapsed() >= LASTED {
                            // What was queued for the lost connection goes direct now.
                            while let Ok(request) = requests.try_recv() {
                                let _ = request.reply.send(Err(QueueError::Unavailable(
                                    "broker connection lost".into(),
                                )));
                            }
                            continue;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%connection, error = %e, "broker unreachable; checkouts go direct until it is back");
            }
        }
        // Wait before the next probe, answering every send at once meanwhile.
        let wait = tokio::time::sleep(backoff.next_jittered());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut wait => break,
                request = requests.recv() => match request {
                    Some(request) => {
                        let _ = request.reply.send(Err(QueueError::Unavailable("broker not connected".into())));
                    }
                    None => stop.cancel(),
                },
            }
        }
    }
    state.set_connected(false);
    state.stopped.store(true, Ordering::Release);
    state.stopped_signal.notify_waiters();
    tracing::debug!("broker publisher stopped");
}

struct Publisher {
    /// Index of the node it is connected to in `options.broker.nodes`.
    node: usize,
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    senders: HashMap<String, Sender>,
    container_id: String,
}

impl Publisher {
    async fn open(options: &AmqpOptions, start: usize) -> Result<Publisher, QueueError> {
        let container_id = format!(
            "cartbus-{}-{}",
            options.instance,
            options.publisher.replace(' ', "-")
        );
        let (mut connection, node) = connect(&options.broker, &container_id, start).await?;
        let session =
            match tokio::time::timeout(CONTROL_TIMEOUT, Session::begin(&mut connection)).await {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => {
                    let _ = connection.close().await;
                    return Err(QueueError::Unavailable(format!(
                        "cannot begin a session: {e}"
                    )));
                }
                Err(_) => {
                    drop(connection);
                    return Err(QueueError::Unavailable("session begin timed out".into()));
                }
            };
        let mut publisher = Publisher {
            node,
            connection,
            session,
            senders: HashMap::new(),
            container_id,
        };
        // Attach the cart address now, so a wrong address shows at connect, not per cart.
        if let Err(e) = publisher.sender(&options.cart_address).await {
            publisher.close(false).await;
            return Err(e);
        }
        Ok(publisher)
    }

    /// The sender link for `address`, attached on first use with a durable terminus (so
    /// that a RabbitMQ 3.x auto-declared queue is durable, not gone after a restart).
    async fn sender(&mut self, address: &str) -> Result<&mut Sender, QueueError> {
        if !self.senders.contains_key(address) {
            let link = Sender::builder()
                .name(format!("{}:{address}", self.container_id))
                .target(durable_target(address))
                .attach(&mut self.session);
            let sender = tokio::time::timeout(CONTROL_TIMEOUT, link)
                .await
                .map_err(|_| QueueError::Unavailable(format!("attaching {address} timed out")))?
                .map_err(|e| QueueError::Refused(attach_failed("a sender to", address, &e)))?;
            self.senders.insert(address.to_string(), sender);
        }
        self.senders
            .get_mut(address)
            .ok_or_else(|| QueueError::Unavailable("sender link missing".into()))
    }

    /// Serves requests until the connection is lost or `stop`.
    async fn serve(
        &mut self,
        requests: &mut mpsc::Receiver<Publish>,
        stop: &CancellationToken,
        options: &AmqpOptions,
    ) -> End {
        let window = options.broker.window.max(1);
        let timeout = options.send_timeout;
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut timeouts_in_a_row = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // Let what is in flight finish briefly; after that it is "unknown".
                    let _ = tokio::time::timeout(timeout, async {
                        while let Some((reply, outcome)) = in_flight.next().await {
                            let _ = reply.send(answer(outcome, timeout, &mut timeouts_in_a_row));
                        }
                    }).await;
                    return End::Stopped;
                }
                // Outcomes that are in go out before a connection close is looked at.
                Some((reply, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    let _ = reply.send(answer(outcome, timeout, &mut timeouts_in_a_row));
                    if timeouts_in_a_row >= HUNG_AFTER_TIMEOUTS {
                        return End::Lost(format!("{timeouts_in_a_row} sends in a row got no outcome within {timeout:?}"));
                    }
                }
                closed = self.connection.on_close() => {
                    answer_ready(&mut in_flight, timeout);
                    return End::Lost(match closed {
                        Ok(()) => "the broker closed the connection".into(),
                        Err(e) => e.to_string(),
                    });
                }
                request = requests.recv(), if in_flight.len() < window => {
                    let Some(Publish { address, message, reply }) = request else {
                        return End::Stopped;
                    };
                    if reply.is_closed() {
                        // Its request already gave up and wrote the order directly.
                        continue;
                    }
                    match self.start_send(&address, message, timeout).await {
                        Ok(delivery) => in_flight.push(Box::pin(async move {
                            (reply, tokio::time::timeout(timeout, delivery).await)
                        })),
                        Err(e) => {
                            let why = e.to_string();
                            let _ = reply.send(Err(e));
                            answer_ready(&mut in_flight, timeout);
                            // A failed attach ends the session, and a send that cannot
                            // even go out means the link is gone: rebuild everything.
                            return End::Lost(why);
                        }
                    }
                }
            }
        }
    }

    /// Puts one transfer on the wire and returns the future of its outcome.
    async fn start_send(
        &mut self,
        address: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<DeliveryFut<Result<Outcome, SendError>>, QueueError> {
        let sender = self.sender(address).await?;
        tokio::time::timeout(timeout, sender.send_batchable(convert::to_amqp(message)))
            .await
            .map_err(|_| {
                QueueError::Unavailable(format!("no link credit or socket within {timeout:?}"))
            })?
            .map_err(|e| QueueError::Unavailable(format!("send failed: {e}")))
    }

    /// On a clean stop, detaches the links (not `close`: RabbitMQ 3.x answers that with
    /// IllegalState) and ends the session first; after a loss, only closes the connection,
    /// briefly, so that reconnecting is not held up by a broker that does not answer.
    async fn close(mut self, clean: bool) {
        if clean {
            for (_, sender) in self.senders.drain() {
                let _ = tokio::time::timeout(CONTROL_TIMEOUT, sender.detach()).await;
            }
            let _ = tokio::time::timeout(CONTROL_TIMEOUT, self.session.end()).await;
        }
        let limit = if clean {
            CONTROL_TIMEOUT
        } else {
            LOST_CLOSE_TIMEOUT
        };
        let _ = tokio::time::timeout(limit, self.connection.close()).await;
    }
}

/// Answers the requests whose outcome is already in, before the rest are dropped (their
/// requests then hear "connection lost" and go direct).
fn answer_ready(in_flight: &mut FuturesUnordered<InFlight>, timeout: Duration) {
    let mut ignored = 0;
    while let Some(Some((reply, outcome))) = in_flight.next().now_or_never() {
        let _ = reply.send(answer(outcome, timeout, &mut ignored));
    }
}

/// A request's answer from its send's outcome; only `Accepted` means queued.
fn answer(
    outcome: Result<Result<Outcome, SendError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    timeouts_in_a_row: &mut u32,
) -> Result<(), QueueError> {
    match outcome {
        Ok(Ok(Outcome::Accepted(_))) => {
            *timeouts_in_a_row = 0;
            Ok(())
        }
        Ok(Ok(other)) => {
            *timeouts_in_a_row = 0;
            Err(QueueError::Refused(format!(
                "broker did not accept: {other:?}"
            )))
        }
        Ok(Err(e)) => Err(QueueError::Unavailable(format!("send failed: {e}"))),
        Err(_) => {
            *timeouts_in_a_row += 1;
            Err(QueueError::Unavailable(format!(
                "no outcome within {timeout:?}"
            )))
        }
    }
}
