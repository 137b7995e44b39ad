//! The AMQP 1.0 broker backend (RabbitMQ, Azure Service Bus, ActiveMQ Artemis), built on
//! fe2o3-amqp. See AMQP-NOTES.md for the broker behaviour this code is shaped around.
//!
//! Two kinds of connection, on purpose:
//! - one long-lived **publishing** connection per instance, owned by a supervisor task
//!   ([`publisher`]) that every HTTP request shares through a bounded window of unsettled
//!   sends, and that reconnects by itself;
//! - one connection per **receiver** ([`receiver`]). RabbitMQ blocks a publishing
//!   connection under a memory or disk alarm, which would also stall a consumer's
//!   settlements on that connection just when the backlog is largest; and a broker gives
//!   unsettled deliveries back only when their session or connection ends, so a receiver
//!   that owns its connection returns everything it holds by closing it.

mod convert;
pub mod management;
mod nodes;
mod publisher;
mod receiver;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Source, Target, TerminusDurability};
use fe2o3_amqp::{Connection, Sender, Session};
use prometheus_client::metrics::counter::Counter;
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, AmqpNode};
use crate::queue::AttemptLedger;
use crate::queue::{Lookup, Message, Queue, QueueConnection, QueueError, QueueStats, Receiver};

pub use convert::to_amqp;
pub use nodes::NodeRegistry;
use publisher::PublisherState;

/// A target whose queue RabbitMQ 3.x declares durable on attach (`/queue/NAME`); with the
/// default terminus the auto-declared queue is non-durable and gone after a restart.
pub fn durable_target(address: &str) -> Target {
    Target::builder()
        .address(address.to_string())
        .durable(TerminusDurability::Configuration)
        .build()
}

/// The receiving side of [`durable_target`]: attaching with another durability to an
/// existing queue fails with precondition-failed.
pub fn durable_source(address: &str) -> Source {
    Source::builder()
        .address(address.to_string())
        .durable(TerminusDurability::Configuration)
        .build()
}

/// How long the peer may stay silent before the connection counts as dead; fe2o3 sends
/// heartbeats at half the peer's value.
const IDLE_TIMEOUT_MS: u32 = 20_000;
/// Bound on every broker round trip that is not a send (attach, detach, end, close).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings the backend takes from the service configuration.
#[derive(Clone, Debug)]
pub struct AmqpOptions {
    pub broker: AmqpConfig,
    /// Names the connections and links, so operators can tell instances apart.
    pub instance: String,
    /// The address whose sender link is attached as soon as the connection opens.
    pub cart_address: String,
    /// The publishing connection's name in logs, metrics and the admin API
    /// (`publisher`; the hand-off's own queue: `hand-off publisher`).
    pub publisher: &'static str,
    /// Where every connection of this instance says which node it is on (shared by the
    /// intake and hand-off queues).
    pub nodes: NodeRegistry,
    /// A send with no outcome after this long counts as failed (the request goes direct).
    pub send_timeout: Duration,
    pub counters: BrokerCounters,
}

/// Where the supervisor counts connections opened and lost (shared with /metrics).
#[derive(Clone, Debug, Default)]
pub struct BrokerCounters {
    pub connects: Counter,
    pub losses: Counter,
}

pub struct AmqpQueue {
    options: Arc<AmqpOptions>,
    /// RabbitMQ's management API, for the backlog's figures, where configured.
    management: Option<management::Management>,
    ledger: Arc<dyn AttemptLedger>,
    requests: mpsc::Sender<publisher::Publish>,
    state: Arc<PublisherState>,
    stop: CancellationToken,
    receivers: AtomicU64,
}

impl AmqpQueue {
    /// Starts the publishing supervisor; never fails: while the broker is unreachable,
    /// sends fail at once (so checkouts go direct) and the supervisor keeps reconnecting.
    pub fn start(options: AmqpOptions, ledger: Arc<dyn AttemptLedger>) -> AmqpQueue {
        let management = options.broker.management.clone().and_then(|config| {
            let vhost = options
                .broker
                .nodes
                .first()
                .and_then(|n| n.vhost.as_deref());
            management::Management::new(config, vhost)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "the broker's depth will not be reported"),
                )
                .ok()
        });
        let options = Arc::new(options);
        let state = Arc::new(PublisherState::new(&options.counters));
        let stop = CancellationToken::new();
        let (requests, incoming) = mpsc::channel(options.broker.window.max(1));
        tokio::spawn(publisher::supervise(
            options.clone(),
            incoming,
            state.clone(),
            stop.clone(),
        ));
        AmqpQueue {
            options,
            management,
            ledger,
            requests,
            state,
            stop,
            receivers: AtomicU64::new(0),
        }
    }
}

impl Drop for AmqpQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Queue for AmqpQueue {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    async fn send(&self, address: &str, message: Message) -> Result<(), QueueError> {
        // The circuit breaker: while the broker is known to be down, do not spend the
        // request's time on it; the supervisor probes it in the background.
        if !self.state.is_connected() {
            return Err(QueueError::Unavailable("broker not connected".into()));
        }
        let (reply, outcome) = oneshot::channel();
        let publish = publisher::Publish {
            address: address.to_string(),
            message,
            reply,
        };
        self.requests
            .send(publish)
            .await
            .map_err(|_| QueueError::Closed)?;
        outcome.await.unwrap_or_else(|_| {
            Err(QueueError::Unavailable(
                "connection lost before the broker confirmed".into(),
            ))
        })
    }

    async fn receiver(&self, address: &str) -> Result<Box<dyn Receiver>, QueueError> {
        let n = self.receivers.fetch_add(1, Ordering::Relaxed);
        let receiver =
            receiver::AmqpReceiver::open(&self.options, self.ledger.clone(), address, n).await?;
        Ok(Box::new(receiver))
    }

    /// From RabbitMQ's management API where `CARTBUS_BROKER_MANAGEMENT_URL` is set: AMQP
    /// 1.0 itself has no way to ask how many messages wait.
    async fn stats(&self, address: &str) -> Result<QueueStats, QueueError> {
        match (&self.management, management::queue_name(address)) {
            (Some(management), Some(queue)) => management.stats(queue).await,
            (Some(_), None) => Err(QueueError::Unavailable(format!(
                "{address} is not a queue; its depth is not reported"
            ))),
            (None, _) => Err(QueueError::Unavailable(
                "AMQP 1.0 does not report queue depth; set CARTBUS_BROKER_MANAGEMENT_URL".into(),
            )),
        }
    }

    async fn lookup(&self, _address: &str, _message_id: &str) -> Result<Lookup, QueueError> {
        Ok(Lookup::Unknown)
    }

    /// Through RabbitMQ's management API where `CARTBUS_BROKER_MANAGEMENT_URL` is set:
    /// AMQP 1.0 cannot delete a queue.
    async fn remove(&self, address: &str) -> Result<bool, QueueError> {
        match (&self.management, management::queue_name(address)) {
            (Some(management), Some(queue)) => management.delete(queue).await.map(|()| true),
            _ => Ok(false),
        }
    }

    fn is_healthy(&self) -> bool {
        self.state.is_connected()
    }

    fn connections(&self) -> Vec<QueueConnection> {
        self.options.nodes.connections()
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        // In-flight sends get `send_timeout` to finish, then detach, end and close.
        let limit = self.options.send_timeout + CONTROL_TIMEOUT * 3;
        self.state.wait_stopped(limit).await;
    }
}

/// Declares `address` by attaching a sender with a durable terminus (on RabbitMQ 3.x a
/// `/queue/NAME` address then creates a durable queue), for `cartbus broker setup`.
pub async fn declare(broker: &AmqpConfig, instance: &str, address: &str) -> Result<(), QueueError> {
    let container_id = format!("cartbus-{instance}-setup");
    let (mut connection, _) = connect(broker, &container_id, 0).await?;
    let declared = async {
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| QueueError::Unavailable(format!("cannot begin a session: {e}")))?;
        let sender = Sender::builder()
            .name(format!("{container_id}:{address}"))
            .target(durable_target(address))
            .attach(&mut session)
            .await
            .map_err(|e| QueueError::Unavailable(attach_failed("to", address, &e)))?;
        let _ = sender.detach().await;
        let _ = session.end().await;
        Ok(())
    };
    let result = tokio::time::timeout(CONTROL_TIMEOUT, declared)
        .await
        .unwrap_or_else(|_| {
            Err(QueueError::Unavailable(format!(
                "declaring {address} timed out"
            )))
        });
    let _ = tokio::time::timeout(CONTROL_TIMEOUT, connection.close()).await;
    result
}

/// Connects to the first of `broker`'s nodes that answers, trying them in turn from
/// `start` (wrapping round); returns the connection and its node's index. Every node's
/// failure is in the error.
async fn connect(
    broker: &AmqpConfig,
    container_id: &str,
    start: usize,
) -> Result<(ConnectionHandle<()>, usize), QueueError> {
    let mut failures = Vec::new();
    for index in nodes::order(broker.nodes.len(), start) {
        match connect_node(broker, &broker.nodes[index], container_id).await {
            Ok(connection) => return Ok((connection, index)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(QueueError::Unavailable(failures.join("; ")))
}

/// Opens a connection the way AMQP-NOTES.md says it must be done: our own TCP connect
/// with a timeout and TCP_NODELAY (fe2o3's `open` has neither), then the AMQP open with
/// a timeout too (a stopped broker process accepts TCP and never answers).
async fn connect_node(
    broker: &AmqpConfig,
    node: &AmqpNode,
    container_id: &str,
) -> Result<ConnectionHandle<()>, QueueError> {
    let endpoint = node.endpoint();
    let unavailable = |what: String| QueueError::Unavailable(format!("{endpoint}: {what}"));
    let stream = tokio::time::timeout(
        broker.connect_timeout,
        TcpStream::connect((node.host.as_str(), node.port)),
    )
    .await
    .map_err(|_| {
        unavailable(format!(
            "TCP connect timed out after {:?}",
            broker.connect_timeout
        ))
    })?
    .map_err(|e| unavailable(format!("TCP connect failed: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| unavailable(format!("cannot set TCP_NODELAY: {e}")))?;

    let vhost = node.vhost.as_ref().map(|v| format!("vhost:{v}"));
    let hostname = vhost.as_deref().unwrap_or(&node.host);
    let profile = match (&node.username, &node.password) {
        (Some(username), password) => SaslProfile::Plain {
            username: username.clone(),
            password: password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default(),
        },
        (None, _) => SaslProfile::Anonymous,
    };
    let builder = Connection::builder()
        .container_id(container_id)
        .scheme(if node.tls { "amqps" } else { "amqp" })
        .domain(node.host.as_str())
        .hostname(hostname)
        .idle_time_out(IDLE_TIMEOUT_MS)
        .sasl_profile(profile)
        // TLS first, as brokers' amqps ports (5671, Azure Service Bus) expect; fe2o3's
        // default sends an AMQP TLS header in the clear, which they drop.
        .alt_tls_establishment(true);
    let opened = if node.tls {
        let connector = tls_connector(broker.ca_file.as_deref()).map_err(&unavailable)?;
        tokio::time::timeout(
            broker.connect_timeout,
            builder.rustls_connector(connector).open_with_stream(stream),
        )
        .await
    } else {
        tokio::time::timeout(broker.connect_timeout, builder.open_with_stream(stream)).await
    };
    opened
        .map_err(|_| {
            unavailable(format!(
                "no AMQP open within {:?} (broker hung or not AMQP 1.0)",
                broker.connect_timeout
            ))
        })?
        // fe2o3's open errors name the failure (SASL outcome, TLS, protocol), never the
        // credentials themselves.
        .map_err(|e| unavailable(format!("AMQP open failed: {e}")))
}

/// Why an attach to `address` failed, with what to do about the one mistake an operator
/// makes most: `/queue/NAME` declares a classic queue, so it cannot attach to a quorum
/// queue of that name (RabbitMQ: "inequivalent arg 'x-queue-type'").
pub(super) fn attach_failed(what: &str, address: &str, error: &dyn std::fmt::Display) -> String {
    let error = error.to_string();
    let hint = if error.contains("x-queue-type") && address.starts_with("/queue/") {
        format!(
            "; the queue exists with another type (quorum?): address it as /amq/queue/{} (CARTBUS_AMQP_QUEUE_TYPE=quorum makes that the default)",
            &address["/queue/".len()..]
        )
    } else {
        String::new()
    };
    format!("cannot attach {what} {address}: {error}{hint}")
}

/// Public roots plus, when configured, the operator's own CA bundle.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("CARTBUS_AMQP_CA_FILE {}: {e}", path.display()))?;
        for certificate in certificates {
            let certificate =
                certificate.map_err(|e| format!("CARTBUS_AMQP_CA_FILE {}: {e}", path.display()))?;
            roots
                .add(certificate)
                .map_err(|e| format!("CARTBUS_AMQP_CA_FILE {}: {e}", path.display()))?;
        }
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
