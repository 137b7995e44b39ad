//! A transport partner, simulated, for tests and demos (`cartbus-partner`): it takes its
//! new-order messages and answers each on the reply-to address with a signed
//! `received_by_partner` carrying a tracking id, then, after a while, `shipped` (and
//! optionally `delivered`). It can also misbehave the way real partners do: send every
//! reply twice, or sign some with the wrong key.
//!
//! It serves several sites (datacenters) at once, as a real partner must: it listens to
//! its queue on every site's broker and answers each order on the broker the order names
//! (`reply_broker`, else `datacenter`), copying `datacenter` back onto each reply. A
//! reply that cannot be sent (that site's broker is down) is retried until it goes.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::domain::Reason;
use crate::domain::partner::{
    self as message, DATACENTER_PROPERTY, NewOrder, REPLY_BROKER_PROPERTY, StatusReply,
};
use crate::queue::{Message, Property, Queue, QueueError, Settlement};

/// One site's broker, as the partner is attached to it. Not `Debug`: it holds the key.
pub struct SimulatorSite {
    /// The site's datacenter name (`CARTBUS_DATACENTER` there); any name for one site.
    pub name: String,
    pub queue: Arc<dyn Queue>,
    /// The broker's public identifiers (each node's `amqp://host:port/vhost`), matched
    /// against a new-order's `reply_broker`.
    pub brokers: Vec<String>,
    /// The HMAC key this site's cartbus checks the partner's replies with.
    pub secret: Vec<u8>,
}

/// How the partner behaves.
pub struct SimulatorOptions {
    /// The partner's name, as in `CARTBUS_ROUTES`.
    pub partner: String,
    /// Where its new-order messages arrive, on every site.
    pub inbox: String,
    /// Where to reply when a message names no reply-to.
    pub reply_to: String,
    /// Delay before `received_by_partner`.
    pub receive_after: Duration,
    /// Delay between `received_by_partner` and `shipped`.
    pub ship_after: Duration,
    /// Delay between `shipped` and `delivered`; `None`: never delivered.
    pub deliver_after: Option<Duration>,
    /// Send every reply twice.
    pub duplicates: bool,
    /// Sign every Nth reply with a wrong key (0: never).
    pub bad_signature_every: u64,
    /// One JSON line per order taken and per reply sent, naming the site of each.
    pub journal: Option<Journal>,
}

/// What the simulator did, readable while it runs.
#[derive(Debug, Default)]
pub struct SimulatorStats {
    pub orders: AtomicU64,
    pub replies: AtomicU64,
    pub bad_signatures: AtomicU64,
    /// Orders that named a broker and datacenter the partner is not attached to: answered
    /// on the site they came from.
    pub unrouted: AtomicU64,
}

/// An append-only file of JSON lines: what the partner took and sent, site by site.
pub struct Journal(Mutex<std::fs::File>);

impl Journal {
    pub fn create(path: &Path) -> std::io::Result<Journal> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Journal(Mutex::new(file)))
    }

    fn write(&self, line: serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::warn!(error = %e, "partner simulator could not write its journal");
        }
    }
}

/// Runs until `stop`; replies still scheduled then are sent before it returns (a reply
/// whose broker is down then is given up, said in the log).
pub async fn run(
    sites: Vec<SimulatorSite>,
    options: SimulatorOptions,
    stats: Arc<SimulatorStats>,
    stop: CancellationToken,
) -> Result<(), QueueError> {
    let partner = Arc::new(Partner {
        sites,
        options,
        stats,
        scheduled: TaskTracker::new(),
        stop: stop.clone(),
    });
    let mut listeners = JoinSet::new();
    for site in 0..partner.sites.len() {
        listeners.spawn(partner.clone().listen(site));
    }
    let mut result = Ok(());
    while let Some(joined) = listeners.join_next().await {
        if let Ok(Err(e)) = joined {
            stop.cancel();
            result = Err(e);
        }
    }
    partner.scheduled.close();
    partner.scheduled.wait().await;
    result
}

struct Partner {
    sites: Vec<SimulatorSite>,
    options: SimulatorOptions,
    stats: Arc<SimulatorStats>,
    scheduled: TaskTracker,
    stop: CancellationToken,
}

/// A new-order as taken, and where its answers go.
struct Taken {
    order: NewOrder,
    reply_to: String,
    /// The site whose broker gets the replies.
    home: usize,
    /// The datacenter the order named, copied onto each reply.
    datacenter: Option<String>,
}

impl Partner {
    /// Takes new-orders from one site's broker until `stop`, reattaching after a loss
    /// (another site's orders flow on meanwhile).
    async fn listen(self: Arc<Self>, site: usize) -> Result<(), QueueError> {
        let name = &self.sites[site].name;
        let inbox = &self.options.inbox;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !self.stop.is_cancelled() {
            let mut receiver = match self.sites[site].queue.receiver(inbox).await {
                Ok(receiver) => receiver,
                Err(e) => {
                    tracing::warn!(site = %name, error = %e, "partner simulator cannot attach; retrying");
                    self.pause(backoff.next_jittered()).await;
                    continue;
                }
            };
            tracing::info!(partner = %self.options.partner, site = %name, %inbox, "partner simulator waiting for orders");
            let lost = loop {
                let deliveries = match receiver.receive(32, &self.stop).await {
                    Ok(deliveries) if deliveries.is_empty() => break None,
                    Ok(deliveries) => deliveries,
                    Err(e) => break Some(e),
                };
                backoff.reset();
                let mut settlements = Vec::with_capacity(deliveries.len());
                for delivery in deliveries {
                    let settlement = match self.take(site, &delivery.message) {
                        Ok(taken) => {
                            // Taken over once the first reply is on its way: at least
                            // once, like a partner.
                            self.scheduled.spawn(self.clone().answer(taken));
                            Settlement::Accept
                        }
                        Err(detail) => Settlement::Reject {
                            reason: Reason::Invalid,
                            detail,
                        },
                    };
                    settlements.push((delivery.tag, settlement));
                }
                if let Err(e) = receiver.settle(settlements).await {
                    break Some(e);
                }
            };
            let _ = receiver.close().await;
            if let Some(e) = lost {
                tracing::warn!(site = %name, error = %e, "partner simulator lost its receiver; reattaching");
                self.pause(backoff.next_jittered()).await;
            }
        }
        Ok(())
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.stop.cancelled() => {}
        }
    }

    /// Reads a new-order and works out which site's broker its replies go to.
    fn take(&self, arrived: usize, message: &Message) -> Result<Taken, String> {
        let order: NewOrder =
            serde_json::from_slice(&message.body).map_err(|e| format!("not a new-order: {e}"))?;
        self.stats.orders.fetch_add(1, Ordering::Relaxed);
        let text = |key: &str| match message.properties.get(key) {
            Some(Property::String(value)) => Some(value.clone()),
            _ => None,
        };
        let datacenter = text(DATACENTER_PROPERTY);
        let reply_broker = text(REPLY_BROKER_PROPERTY);
        let by_broker = reply_broker
            .as_ref()
            .and_then(|b| self.sites.iter().position(|s| s.brokers.contains(b)));
        let by_name = datacenter
            .as_ref()
            .and_then(|d| self.sites.iter().position(|s| &s.name == d));
        let home = by_broker.or(by_name).unwrap_or_else(|| {
            if datacenter.is_some() || reply_broker.is_some() {
                self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(order_id = %order.order_id, ?datacenter, ?reply_broker, arrived_on = %self.sites[arrived].name,
                    "new-order names a site this partner is not attached to; answering where it came from");
            }
            arrived
        });
        if let Some(journal) = &self.options.journal {
            journal.write(serde_json::json!({
                "event": "order", "order_id": order.order_id,
                "arrived_on": self.sites[arrived].name, "datacenter": datacenter,
                "reply_broker": reply_broker, "answer_on": self.sites[home].name,
            }));
        }
        Ok(Taken {
            reply_to: message
                .reply_to
                .clone()
                .unwrap_or_else(|| self.options.reply_to.clone()),
            order,
            home,
            datacenter,
        })
    }

    async fn answer(self: Arc<Self>, taken: Taken) {
        let options = &self.options;
        let order_id = taken.order.order_id;
        let tracking_id = format!("TRK-{}", &order_id.simple().to_string()[..12]);
        let mut steps = vec![
            (options.receive_after, "received_by_partner"),
            (options.ship_after, "shipped"),
        ];
        if let Some(after) = options.deliver_after {
            steps.push((after, "delivered"));
        }
        let site = &self.sites[taken.home];
        for (after, status) in steps {
            tokio::time::sleep(after).await;
            let reply = StatusReply {
                order_id,
                status: status.to_string(),
                tracking_id: Some(tracking_id.clone()),
                partner: options.partner.clone(),
            };
            let copies = if options.duplicates { 2 } else { 1 };
            for _ in 0..copies {
                let n = self.stats.replies.fetch_add(1, Ordering::Relaxed) + 1;
                let bad = options.bad_signature_every > 0
                    && n.is_multiple_of(options.bad_signature_every);
                let key: &[u8] = if bad {
                    self.stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
                    b"not-the-shared-secret"
                } else {
                    &site.secret
                };
                let message = message::reply(&reply, key, taken.datacenter.as_deref());
                if !self.send(site, &taken.reply_to, message).await {
                    return;
                }
                if let Some(journal) = &options.journal {
                    journal.write(serde_json::json!({
                        "event": "reply", "order_id": order_id, "status": status,
                        "sent_on": site.name, "datacenter": taken.datacenter,
                    }));
                }
            }
        }
    }

    /// Sends one reply, retrying while its broker is down; false when `stop` came first.
    async fn send(&self, site: &SimulatorSite, address: &str, message: Message) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match site.queue.send(address, message.clone()).await {
                Ok(()) => return true,
                Err(e) if self.stop.is_cancelled() => {
                    tracing::warn!(site = %site.name, message_id = %message.message_id, error = %e, "partner simulator stopping: reply not sent");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(site = %site.name, message_id = %message.message_id, error = %e, "partner simulator could not reply; retrying");
                    self.pause(backoff.next_jittered()).await;
                }
            }
        }
    }
}
