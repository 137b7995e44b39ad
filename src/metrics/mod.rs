//! Prometheus metrics, one registry per app (no globals, so tests can run apps side by side).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::Reason;

mod known;
pub mod outcomes;
mod webhooks;

pub use known::KnownGauge;
pub use webhooks::{EndpointLabel, WebhookMetrics};

/// A figure read from the queue or the database when `/metrics` is scraped
/// (`runtime::sample`); each has its own `cartbus_sample_stale{figure}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// `cartbus_queue_depth_messages` and `cartbus_queue_oldest_age_seconds` (on a broker
    /// read from its management API; without one never read, and both absent).
    QueueDepth,
    /// `cartbus_drain_switch_paused`, `cartbus_drain_switch_drained`, `cartbus_instances`.
    DrainSwitch,
    /// `cartbus_outbox_rows`.
    OutboxRows,
    /// `cartbus_dead_letters`.
    DeadLetters,
    /// `cartbus_payments_unknown`.
    PaymentsUnknown,
    /// `cartbus_payments_captured_without_order`.
    PaymentsCapturedWithoutOrder,
    /// `cartbus_webhook_endpoints`, `cartbus_webhook_pending`,
    /// `cartbus_webhook_oldest_pending_seconds`.
    Webhooks,
}

impl Figure {
    pub const ALL: [Figure; 7] = [
        Figure::QueueDepth,
        Figure::DrainSwitch,
        Figure::OutboxRows,
        Figure::DeadLetters,
        Figure::PaymentsUnknown,
        Figure::PaymentsCapturedWithoutOrder,
        Figure::Webhooks,
    ];

    /// The `figure` label: the name of the gauge it feeds, without `cartbus_`.
    pub fn as_str(self) -> &'static str {
        match self {
            Figure::QueueDepth => "queue_depth",
            Figure::DrainSwitch => "drain_switch",
            Figure::OutboxRows => "outbox_rows",
            Figure::DeadLetters => "dead_letters",
            Figure::PaymentsUnknown => "payments_unknown",
            Figure::PaymentsCapturedWithoutOrder => "payments_captured_without_order",
            Figure::Webhooks => "webhooks",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FigureLabel {
    pub figure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// A broker connection (`publisher`, `receiver 0 (/queue/checkout-carts)`…) and the node
/// it is on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerConnectionLabels {
    pub connection: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    /// Checkouts by outcome ([`outcomes::CHECKOUTS`]).
    pub checkouts: Family<Outcome, Counter>,
    /// Consumed messages by outcome ([`outcomes::CONSUMER`]).
    pub consumer: Family<Outcome, Counter>,
    pub http_requests: Family<HttpLabels, Histogram>,
    /// Absent until the queue has reported them (a broker without its management API
    /// never does).
    pub queue_depth: KnownGauge<i64, std::sync::atomic::AtomicI64>,
    pub queue_oldest_age: KnownGauge<f64, AtomicU64>,
    pub ready: Gauge,
    /// 1 while the queue takes carts (for a broker: while the publishing link is up).
    pub queue_up: Gauge,
    /// Broker connections opened and lost; a climbing loss count is a flapping broker.
    pub queue_connects: Counter,
    pub queue_connection_losses: Counter,
    /// 1 for each broker connection open now, labelled with the node it is on.
    pub broker_connections: Family<BrokerConnectionLabels, Gauge>,
    /// HTTP connections open, and those closed at once for `CARTBUS_MAX_CONNECTIONS`.
    pub http_connections: Gauge,
    pub http_connections_refused: Counter,
    /// The drain switch as this instance lives it.
    pub consumer_running: Gauge,
    pub consumer_in_flight: Gauge,
    pub intake_per_second: Gauge<f64, AtomicU64>,
    pub drain_per_second: Gauge<f64, AtomicU64>,
    /// Carts this instance put on the queue; also what its heartbeat reports, so that
    /// `rate()` of the sum over instances is `intake_per_second`.
    pub intake_messages: Counter,
    /// Cart messages this instance's consumer took off the queue for good (accepted or
    /// dead-lettered; a release is not drain).
    pub drain_messages: Counter,
    pub catch_up_eta_seconds: Gauge<f64, AtomicU64>,
    /// Live instances by the state they report (sampled at scrape).
    pub instances: Family<StateLabel, Gauge>,
    /// The drain switch as the database holds it (sampled at scrape).
    pub drain_switch_paused: Gauge,
    pub drain_switch_drained: Gauge,
    /// Outbox events by outcome ([`outcomes::OUTBOX`]).
    pub outbox_events: Family<Outcome, Counter>,
    /// Outbox rows not yet processed, by status (sampled at scrape).
    pub outbox_rows: Family<StatusLabel, Gauge>,
    /// Partner status replies by outcome ([`outcomes::PARTNER_REPLIES`]): applied,
    /// duplicate, or the dead-letter reason.
    pub partner_replies: Family<Outcome, Counter>,
    /// Dead-letter resubmits by outcome ([`outcomes::DEAD_LETTER_RESUBMITS`]; dry runs not
    /// counted).
    pub dead_letter_resubmits: Family<Outcome, Counter>,
    /// Dead letters neither resolved nor deleted, by reason (sampled at scrape; set
    /// through [`Metrics::set_dead_letters`]).
    pub dead_letters: Family<ReasonLabel, Gauge>,
    /// Every reason `dead_letters` has a series for: each a message can be dead-lettered
    /// for, and any other the database has shown (one another version wrote).
    dead_letter_reasons: Mutex<BTreeSet<String>>,
    /// Payment capture calls by outcome ([`outcomes::PAYMENT_CALLS`]).
    pub payment_calls: Family<Outcome, Counter>,
    /// Payments whose outcome is unknown and unresolved (sampled at scrape).
    pub payments_unknown: Gauge,
    /// Captured payments left without an order (sampled at scrape).
    pub payments_captured_without_order: Gauge,
    /// By [`Figure`]: 1 when its last read at scrape failed or timed out, so the gauges
    /// it feeds show an older value; 0 when fresh. Set through [`Metrics::sampled`].
    pub sample_stale: Family<FigureLabel, Gauge>,
    /// Webhook calls, endpoints and what waits for them.
    pub webhooks: WebhookMetrics,
    /// Smoke checkouts, counted apart from real ones ([`outcomes::SMOKE_RUNS`]).
    pub smoke_runs: Family<Outcome, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cartbus");
        let checkouts = Family::<Outcome, Counter>::default();
        registry.register("checkouts", "Checkouts by outcome", checkouts.clone());
        let consumer = Family::<Outcome, Counter>::default();
        registry.register(
            "consumer_messages",
            "Cart messages handled by the consumer, by outcome",
            consumer.clone(),
        );
        let http_requests = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            http_requests.clone(),
        );
        let queue_depth = KnownGauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "queue_depth_messages",
            "Cart messages waiting in the queue (sampled at scrape)",
            queue_depth.clone(),
        );
        let queue_oldest_age = KnownGauge::<f64, AtomicU64>::default();
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest waiting cart message (sampled at scrape)",
            queue_oldest_age.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the instance is ready for traffic",
            ready.clone(),
        );
        let queue_up = Gauge::default();
        registry.register(
            "queue_up",
            "1 while the queue takes carts (a broker: while connected)",
            queue_up.clone(),
        );
        let queue_connects = Counter::default();
        registry.register(
            "queue_connections",
            "Broker connections opened",
            queue_connects.clone(),
        );
        let queue_connection_losses = Counter::default();
        registry.register(
            "queue_connection_losses",
            "Broker connections lost or dropped as hung",
            queue_connection_losses.clone(),
        );
        let broker_connections = Family::<BrokerConnectionLabels, Gauge>::default();
        registry.register(
            "broker_connection_info",
            "1 for each broker connection open now, by connection and the node it is on",
            broker_connections.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open",
            http_connections.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed as soon as accepted: CARTBUS_MAX_CONNECTIONS were open",
            http_connections_refused.clone(),
        );
        let consumer_running = Gauge::default();
        registry.register(
            "consumer_running",
            "1 while this instance consumes (the drain switch lets it and it is the active version)",
            consumer_running.clone(),
        );
        let consumer_in_flight = Gauge::default();
        registry.register(
            "consumer_in_flight",
            "Deliveries this instance holds and has not settled",
            consumer_in_flight.clone(),
        );
        let intake_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "intake_per_second",
            "Carts queued per second, all instances, last 15 s",
            intake_per_second.clone(),
        );
        let drain_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "drain_per_second",
            "Cart messages taken off the queue for good (accepted or dead-lettered) per second, all instances, last 15 s",
            drain_per_second.clone(),
        );
        let intake_messages = Counter::default();
        registry.register(
            "intake_messages",
            "Carts this instance put on the queue (sum the rate over instances for the intake rate)",
            intake_messages.clone(),
        );
        let drain_messages = Counter::default();
        registry.register(
            "drain_messages",
            "Cart messages this instance took off the queue for good: accepted or dead-lettered (sum the rate over instances for the drain rate)",
            drain_messages.clone(),
        );
        let instances = Family::<StateLabel, Gauge>::default();
        registry.register(
            "instances",
            "Instances heard from in the last 5 s, by state: running, pausing, paused, passive, fenced, stopped (sampled at scrape)",
            instances.clone(),
        );
        let drain_switch_paused = Gauge::default();
        registry.register(
            "drain_switch_paused",
            "1 while the drain switch says paused (sampled at scrape)",
            drain_switch_paused.clone(),
        );
        let drain_switch_drained = Gauge::default();
        registry.register(
            "drain_switch_drained",
            "1 when paused and every live instance has stopped consuming and holds nothing (sampled at scrape)",
            drain_switch_drained.clone(),
        );
        let catch_up_eta_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "catch_up_eta_seconds",
            "Seconds until the queue is empty at current rates: 0 when empty, NaN when not shrinking or the depth is unknown",
            catch_up_eta_seconds.clone(),
        );
        let outbox_events = Family::<Outcome, Counter>::default();
        registry.register(
            "outbox_events",
            "Fulfilment relay: orders sent to partners, audit copies, failed sends, critical errors",
            outbox_events.clone(),
        );
        let outbox_rows = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "outbox_rows",
            "Outbox rows waiting or stuck, by status: pending, error (retrying), critical_error (sampled at scrape)",
            outbox_rows.clone(),
        );
        let partner_replies = Family::<Outcome, Counter>::default();
        registry.register(
            "partner_replies",
            "Partner status replies by outcome: applied, duplicate, or the dead-letter reason",
            partner_replies.clone(),
        );
        let dead_letter_resubmits = Family::<Outcome, Counter>::default();
        registry.register(
            "dead_letter_resubmits",
            "Dead letters resubmitted by an operator, by outcome (created-order, duplicate, conflict, ...; dry runs not counted)",
            dead_letter_resubmits.clone(),
        );
        let payment_calls = Family::<Outcome, Counter>::default();
        registry.register(
            "payment_calls",
            "Payment capture calls by outcome (captured, declined, unknown, not_sent; late_after_resolution: answered after an operator resolved it)",
            payment_calls.clone(),
        );
        let payments_unknown = Gauge::default();
        registry.register(
            "payments_unknown",
            "Carts whose payment outcome is unknown and not yet resolved (sampled at scrape)",
            payments_unknown.clone(),
        );
        let dead_letters = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "dead_letters",
            "Dead letters waiting for a person (neither resolved nor deleted), by reason; 0 when none is left (sampled at scrape)",
            dead_letters.clone(),
        );
        let payments_captured_without_order = Gauge::default();
        registry.register(
            "payments_captured_without_order",
            "Captured payments whose order was not written (the order write failed or its process died; sampled at scrape)",
            payments_captured_without_order.clone(),
        );
        let sample_stale = Family::<FigureLabel, Gauge>::default();
        registry.register(
            "sample_stale",
            "1 when a figure read at scrape was not had (its read failed or took over 1 s), so the gauges it feeds show an older value; 0 when fresh",
            sample_stale.clone(),
        );
        let webhooks = WebhookMetrics::register(&mut registry);
        let smoke_runs = Family::<Outcome, Counter>::default();
        registry.register(
            "smoke_runs",
            "Smoke checkouts run on this instance (nothing they do is kept), by outcome",
            smoke_runs.clone(),
        );
        for figure in Figure::ALL {
            let _ = sample_stale.get_or_create(&FigureLabel {
                figure: figure.as_str(),
            });
        }
        for (family, known) in [
            (&checkouts, &outcomes::CHECKOUTS),
            (&consumer, &outcomes::CONSUMER),
            (&outbox_events, &outcomes::OUTBOX),
            (&partner_replies, &outcomes::PARTNER_REPLIES),
            (&dead_letter_resubmits, &outcomes::DEAD_LETTER_RESUBMITS),
            (&payment_calls, &outcomes::PAYMENT_CALLS),
            (&smoke_runs, &outcomes::SMOKE_RUNS),
        ] {
            for &outcome in known.iter() {
                let _ = family.get_or_create(&Outcome { outcome });
            }
        }
        Metrics {
            smoke_runs,
            webhooks,
            sample_stale,
            dead_letters,
            dead_letter_reasons: Mutex::new(
                Reason::dead_lettered()
                    .map(|reason| reason.as_str().to_string())
                    .collect(),
            ),
            outbox_events,
            outbox_rows,
            partner_replies,
            dead_letter_resubmits,
            registry,
            payment_calls,
            payments_unknown,
            payments_captured_without_order,
            consumer_running,
            consumer_in_flight,
            intake_per_second,
            drain_per_second,
            intake_messages,
            drain_messages,
            catch_up_eta_seconds,
            instances,
            drain_switch_paused,
            drain_switch_drained,
            queue_up,
            queue_connects,
            queue_connection_losses,
            broker_connections,
            http_connections,
            http_connections_refused,
            checkouts,
            consumer,
            http_requests,
            queue_depth,
            queue_oldest_age,
            ready,
        }
    }

    pub fn checkout(&self, outcome: &'static str) {
        count(
            &self.checkouts,
            &outcomes::CHECKOUTS,
            "checkouts",
            outcome,
            1,
        );
    }

    pub fn payment_call(&self, outcome: &'static str) {
        count(
            &self.payment_calls,
            &outcomes::PAYMENT_CALLS,
            "payment_calls",
            outcome,
            1,
        );
    }

    pub fn consumed(&self, outcome: &'static str, n: u64) {
        count(
            &self.consumer,
            &outcomes::CONSUMER,
            "consumer_messages",
            outcome,
            n,
        );
    }

    pub fn outbox(&self, outcome: &'static str, n: u64) {
        count(
            &self.outbox_events,
            &outcomes::OUTBOX,
            "outbox_events",
            outcome,
            n,
        );
    }

    pub fn dead_letter_resubmit(&self, outcome: &'static str) {
        count(
            &self.dead_letter_resubmits,
            &outcomes::DEAD_LETTER_RESUBMITS,
            "dead_letter_resubmits",
            outcome,
            1,
        );
    }

    pub fn smoke_run(&self, passed: bool) {
        let outcome = if passed { "passed" } else { "failed" };
        count(
            &self.smoke_runs,
            &outcomes::SMOKE_RUNS,
            "smoke_runs",
            outcome,
            1,
        );
    }

    pub fn partner_reply(&self, outcome: &'static str) {
        count(
            &self.partner_replies,
            &outcomes::PARTNER_REPLIES,
            "partner_replies",
            outcome,
            1,
        );
    }

    /// Sets `cartbus_dead_letters` from the open dead letters by reason (`counts`, as the
    /// database has them). Every reason known or seen before is set, 0 when none is left,
    /// and the family is never cleared, so a scrape running alongside never finds it
    /// empty or half filled, and a reason with none left reads 0 rather than vanish.
    pub fn set_dead_letters(&self, counts: &[(String, i64)]) {
        let mut reasons = self
            .dead_letter_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reasons.extend(counts.iter().map(|(reason, _)| reason.clone()));
        for reason in reasons.iter() {
            let n = counts
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n);
            self.dead_letters
                .get_or_create(&ReasonLabel {
                    reason: reason.clone(),
                })
                .set(n);
        }
    }

    /// Says whether `figure` was just read (`fresh`) or keeps an older value.
    pub fn sampled(&self, figure: Figure, fresh: bool) {
        self.sample_stale
            .get_or_create(&FigureLabel {
                figure: figure.as_str(),
            })
            .set(i64::from(!fresh));
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Adds `n` to `family`'s `outcome`, which must be one of the `known` ones it was
/// registered with (checked in debug builds).
fn count(
    family: &Family<Outcome, Counter>,
    known: &outcomes::List,
    name: &str,
    outcome: &'static str,
    n: u64,
) {
    debug_assert!(
        known.contains(&outcome),
        "cartbus_{name}_total{{outcome=\"{outcome}\"}} is not a known outcome: add it to its \
         list in metrics::outcomes, so that it is there at 0 before it first happens"
    );
    family.get_or_create(&Outcome { outcome }).inc_by(n);
}

#[cfg(test)]
mod tests;
