//! Webhook metrics (issue 20): calls by outcome, endpoints by state, and what waits.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Outcome, StateLabel, count, outcomes};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

/// States an endpoint can be in, each with a series from the start.
const STATES: [&str; 3] = ["enabled", "failing", "disabled"];

pub struct WebhookMetrics {
    /// Calls to receivers by outcome ([`outcomes::WEBHOOK_CALLS`]).
    calls: Family<Outcome, Counter>,
    /// Endpoints by state (sampled at scrape).
    endpoints: Family<StateLabel, Gauge>,
    /// Deliveries not yet delivered, by endpoint (sampled at scrape).
    pending: Family<EndpointLabel, Gauge>,
    /// Age of each endpoint's oldest pending delivery; 0 when none (sampled at scrape).
    oldest_pending: Family<EndpointLabel, Gauge<f64, AtomicU64>>,
    /// Age of the oldest event not yet queued for the endpoints (sampled at scrape).
    pub fan_out_lag: Gauge<f64, AtomicU64>,
}

impl WebhookMetrics {
    pub(super) fn register(registry: &mut Registry) -> WebhookMetrics {
        let calls = Family::<Outcome, Counter>::default();
        registry.register(
            "webhook_calls",
            "Webhook calls to receivers by outcome: delivered (2xx), refused (another status), timeout, unreachable, gone (410: endpoint disabled)",
            calls.clone(),
        );
        for &outcome in outcomes::WEBHOOK_CALLS.iter() {
            let _ = calls.get_or_create(&Outcome { outcome });
        }
        let endpoints = Family::<StateLabel, Gauge>::default();
        registry.register(
            "webhook_endpoints",
            "Webhook endpoints by state: enabled, failing (out of retries, probed), disabled (sampled at scrape)",
            endpoints.clone(),
        );
        for state in STATES {
            let _ = endpoints.get_or_create(&StateLabel {
                state: state.to_string(),
            });
        }
        let pending = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "webhook_pending",
            "Order events not yet delivered, by endpoint (sampled at scrape)",
            pending.clone(),
        );
        let oldest_pending = Family::<EndpointLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "webhook_oldest_pending_seconds",
            "Age of each endpoint's oldest undelivered event; 0 when none (sampled at scrape)",
            oldest_pending.clone(),
        );
        let fan_out_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "webhook_fanout_lag_seconds",
            "Age of the oldest order event not yet queued for the webhook endpoints; 0 when none. On PostgreSQL a long write transaction anywhere on the server holds it back (sampled at scrape)",
            fan_out_lag.clone(),
        );
        WebhookMetrics {
            fan_out_lag,
            calls,
            endpoints,
            pending,
            oldest_pending,
        }
    }

    pub fn call(&self, outcome: &'static str) {
        count(
            &self.calls,
            &outcomes::WEBHOOK_CALLS,
            "webhook_calls",
            outcome,
            1,
        );
    }

    /// Sets the sampled gauges: each endpoint as (id, state, pending, oldest age in
    /// seconds). Endpoints no longer there keep no series.
    pub fn set_endpoints(&self, endpoints: &[(String, &str, i64, f64)]) {
        for state in STATES {
            let n = endpoints.iter().filter(|(_, s, _, _)| *s == state).count();
            self.endpoints
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.pending.clear();
        self.oldest_pending.clear();
        for (endpoint, _, pending, oldest) in endpoints {
            let label = EndpointLabel {
                endpoint: endpoint.clone(),
            };
            self.pending.get_or_create(&label).set(*pending);
            self.oldest_pending.get_or_create(&label).set(*oldest);
        }
    }
}
