//! A transport partner, simulated, for tests and demos (`cartbus-partner`): it takes its
//! new-order messages and answers each on the reply-to address with a signed
//! `received_by_partner` carrying a tracking id, then, after a while, `shipped` (and
//! optionally `delivered`). It can also misbehave the way real partners do: send every
//! reply twice, or sign some with the wrong key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::Reason;
use crate::domain::partner::{self as message, NewOrder, StatusReply};
use crate::queue::{Queue, QueueError, Settlement};

/// Not `Debug`: it holds the shared secret.
#[derive(Clone)]
pub struct SimulatorOptions {
    /// The partner's name, as in `CARTBUS_ROUTES`.
    pub partner: String,
    /// The HMAC key shared with cartbus (`CARTBUS_PARTNER_<NAME>_SECRET`).
    pub secret: Vec<u8>,
    /// Where its new-order messages arrive.
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
}

/// What the simulator did, readable while it runs.
#[derive(Debug, Default)]
pub struct SimulatorStats {
    pub orders: AtomicU64,
    pub replies: AtomicU64,
    pub bad_signatures: AtomicU64,
}

/// Runs until `stop`; replies still scheduled then are sent before it returns.
pub async fn run(
    queue: Arc<dyn Queue>,
    options: SimulatorOptions,
    stats: Arc<SimulatorStats>,
    stop: CancellationToken,
) -> Result<(), QueueError> {
    let options = Arc::new(options);
    let scheduled = TaskTracker::new();
    let mut receiver = queue.receiver(&options.inbox).await?;
    tracing::info!(partner = %options.partner, inbox = %options.inbox, "partner simulator waiting for orders");
    let result = loop {
        let deliveries = match receiver.receive(32, &stop).await {
            Ok(deliveries) if deliveries.is_empty() => break Ok(()),
            Ok(deliveries) => deliveries,
            Err(e) => break Err(e),
        };
        let mut settlements = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let order: NewOrder = match serde_json::from_slice(&delivery.message.body) {
                Ok(order) => order,
                Err(e) => {
                    settlements.push((
                        delivery.tag,
                        Settlement::Reject {
                            reason: Reason::Invalid,
                            detail: format!("not a new-order: {e}"),
                        },
                    ));
                    continue;
                }
            };
            stats.orders.fetch_add(1, Ordering::Relaxed);
            let reply_to = delivery
                .message
                .reply_to
                .clone()
                .unwrap_or_else(|| options.reply_to.clone());
            let (queue, options, stats) = (queue.clone(), options.clone(), stats.clone());
            // Taken over once the first reply is on its way: at least once, like a partner.
            scheduled.spawn(answer(queue, options, stats, order, reply_to));
            settlements.push((delivery.tag, Settlement::Accept));
        }
        if let Err(e) = receiver.settle(settlements).await {
            break Err(e);
        }
    };
    let _ = receiver.close().await;
    scheduled.close();
    scheduled.wait().await;
    result
}

async fn answer(
    queue: Arc<dyn Queue>,
    options: Arc<SimulatorOptions>,
    stats: Arc<SimulatorStats>,
    order: NewOrder,
    reply_to: String,
) {
    let tracking_id = format!("TRK-{}", &order.order_id.simple().to_string()[..12]);
    let mut steps = vec![
        (options.receive_after, "received_by_partner"),
        (options.ship_after, "shipped"),
    ];
    if let Some(after) = options.deliver_after {
        steps.push((after, "delivered"));
    }
    for (after, status) in steps {
        tokio::time::sleep(after).await;
        let reply = StatusReply {
            order_id: order.order_id,
            status: status.to_string(),
            tracking_id: Some(tracking_id.clone()),
            partner: options.partner.clone(),
        };
        let copies = if options.duplicates { 2 } else { 1 };
        for _ in 0..copies {
            let n = stats.replies.fetch_add(1, Ordering::Relaxed) + 1;
            let bad =
                options.bad_signature_every > 0 && n.is_multiple_of(options.bad_signature_every);
            let key: &[u8] = if bad {
                stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
                b"not-the-shared-secret"
            } else {
                &options.secret
            };
            if let Err(e) = queue.send(&reply_to, message::reply(&reply, key)).await {
                tracing::warn!(order_id = %order.order_id, status, error = %e, "partner simulator could not reply");
            }
        }
    }
}
