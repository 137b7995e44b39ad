//! Dispatch right after the commit (issue 17). The consumer has just placed a batch of
//! orders and holds them in memory, so it hands them on at once instead of leaving them
//! for the polling relay to claim, read back and send: inside the orders' own
//! transaction their outbox rows are written leased to this instance, exactly as a relay's
//! claim would lease them ([`OutboxLease`]); after the commit the batch
//! goes down a short line to the dispatcher, which sends the orders through the queue's
//! window and marks the rows `processed` — several batches in one transaction when they
//! queue up ([`super::hand_off`]).
//!
//! Nothing about delivery changes: the lease is the relay's, so if this instance dies or
//! stalls between the commit and the mark, the lease lapses and the polling relay sends
//! the rows (at least once; partners dedupe on the order id), and a relay never takes a
//! row this instance still holds. When the line is full for longer than
//! [`RESERVE_WAIT`], or the queue is down, the consumer leases nothing and the relay
//! hands the orders on as before.
//!
//! A dispatch in flight is work in hand: the drain switch reports this instance
//! `pausing` until it is done ([`Control::begin_hand_off`]), so `drained` means every
//! order committed before it has been handed on or left, unleased, to the relay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::drain::Control;
use super::hand_off::{HandOff, Held};
use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::Cart;
use crate::domain::order::{OrderView, Source};
use crate::queue::Queue;
use crate::store::outbox::OutboxLease;

/// Batches waiting for the dispatcher: enough to keep it busy while the consumer writes
/// the next, few enough that the consumer cannot run far ahead of the hand-off.
pub const LINE: usize = 4;
/// How long the consumer waits for a place in the line before it leaves its orders to
/// the polling relay.
pub const RESERVE_WAIT: Duration = Duration::from_secs(1);
/// Most orders the dispatcher sends (and marks in one transaction) at once.
const MOST_AT_ONCE: usize = 2_048;

/// Orders just committed, leased to this instance, each with its partner.
pub struct Fresh {
    batch_id: Uuid,
    until: DateTime<Utc>,
    orders: Vec<(OrderView, String)>,
}

/// A new line: the consumers' end and the dispatcher's.
pub fn line() -> (mpsc::Sender<Fresh>, mpsc::Receiver<Fresh>) {
    mpsc::channel(LINE)
}

/// The consumer's end of the line.
pub struct Dispatch<'a> {
    pub line: &'a mpsc::Sender<Fresh>,
    /// The queue the dispatcher sends on: while it is down, nothing is leased.
    pub queue: &'a dyn Queue,
    pub settings: &'a FulfilmentSettings,
    /// `CARTBUS_INSTANCE`: the name on the leases.
    pub instance: &'a str,
    pub control: &'a Control,
}

impl<'a> Dispatch<'a> {
    /// A place in the line, taken before the orders' transaction begins (so that a lease
    /// is only written when its orders will certainly be sent); `None` when the queue is
    /// down or the line stays full for [`RESERVE_WAIT`].
    pub async fn reserve(&'a self) -> Option<Reserved<'a>> {
        if !self.queue.is_healthy() {
            return None;
        }
        let permit = match self.line.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return None,
            Err(mpsc::error::TrySendError::Full(())) => {
                tokio::time::timeout(RESERVE_WAIT, self.line.reserve())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        Some(Reserved {
            permit,
            dispatch: self,
            lease: OutboxLease::starting_now(self.instance, self.settings.relay.lease),
        })
    }
}

/// A place in the line, and the lease the orders of the batch are written under.
pub struct Reserved<'a> {
    permit: mpsc::Permit<'a, Fresh>,
    dispatch: &'a Dispatch<'a>,
    lease: OutboxLease<'a>,
}

impl<'a> Reserved<'a> {
    /// The lease for [`crate::store::orders::place_many`]: the orders' outbox rows are
    /// written leased to this instance, in their own transaction.
    pub fn lease(&self) -> &OutboxLease<'a> {
        &self.lease
    }

    /// The partner `cart`'s order goes to; `None` when no `CARTBUS_ROUTES` rule covers it
    /// (its row is not leased: the relay records why it cannot be sent).
    pub fn partner_for(&self, cart: &Cart) -> Option<String> {
        let address = &cart.shipping_address;
        self.dispatch
            .settings
            .routes
            .as_ref()
            .and_then(|routes| {
                routes.partner_for(address.country.as_str(), address.region.as_deref())
            })
            .map(str::to_string)
    }

    /// The orders just `created` (each with its cart), written under [`Self::lease`],
    /// to hand to the dispatcher once their transaction commits.
    pub fn leased(
        self,
        created: &[(&Cart, Uuid)],
        source: Source,
        at: DateTime<Utc>,
    ) -> Leased<'a> {
        let mut orders = Vec::with_capacity(created.len());
        for (cart, order_id) in created {
            if let Some(partner) = self.partner_for(cart) {
                let mut order = OrderView::placed(cart, *order_id, source, at);
                order.transport_partner = Some(partner.clone());
                orders.push((order, partner));
            }
        }
        Leased {
            permit: self.permit,
            control: self.dispatch.control,
            unleased: created.len() - orders.len(),
            fresh: Fresh {
                batch_id: self.lease.batch_id,
                until: self.lease.until,
                orders,
            },
        }
    }
}

/// Leased orders, to hand to the dispatcher once their transaction has committed.
pub struct Leased<'a> {
    permit: mpsc::Permit<'a, Fresh>,
    control: &'a Control,
    unleased: usize,
    fresh: Fresh,
}

impl Leased<'_> {
    /// After the commit: into the line. Returns how many orders were not leased (the
    /// relay's to hand on). Dropped instead (the commit failed), the place is given back
    /// and the rows, if they did commit, wait for their lease to lapse.
    pub fn send(self) -> usize {
        if !self.fresh.orders.is_empty() {
            self.control.begin_hand_off();
            self.permit.send(self.fresh);
        }
        self.unleased
    }
}

/// The dispatcher: hands on what comes down the line until every consumer has let go of
/// its end (shutdown), finishing what is in the line.
pub async fn run(hand_off: HandOff<'_>, control: &Control, mut line: mpsc::Receiver<Fresh>) {
    let mut batches: Vec<Fresh> = Vec::new();
    while let Some(first) = line.recv().await {
        let mut orders = first.orders.len();
        batches.push(first);
        while orders < MOST_AT_ONCE {
            match line.try_recv() {
                Ok(more) => {
                    orders += more.orders.len();
                    batches.push(more);
                }
                Err(_) => break,
            }
        }
        let now = Utc::now();
        let mut held = Vec::with_capacity(orders);
        for batch in &batches {
            if batch.until <= now {
                // Another relay may hold these rows by now: they are its to send.
                tracing::warn!(
                    orders = batch.orders.len(),
                    "outbox lease lapsed before the dispatcher reached the orders; leaving them to the relay"
                );
                continue;
            }
            held.extend(batch.orders.iter().map(|(order, partner)| Held {
                batch_id: batch.batch_id,
                order,
                partner: Some(partner.as_str()),
                retry_count: 0,
            }));
        }
        // Test-only: a dispatch that takes this long, for the pause to wait on.
        crate::fault::delay_if_hit("dispatch-slow").await;
        match hand_off.send(&held).await {
            Ok(sent) => hand_off
                .metrics
                .outbox("sent_at_commit", sent.marked as u64),
            Err(e) => {
                tracing::warn!(error = %e, orders = held.len(), lease = ?hand_off.settings.relay.lease, "could not record the hand-off of new orders; the relay sends them again once their lease lapses")
            }
        }
        control.end_hand_off(batches.len());
        batches.clear();
    }
    tracing::info!("dispatcher stopped");
}
