//! Webhook delivery (issue 20), on every instance whose drain switch lets it work, as
//! the fulfilment relay is: a paused or fenced instance sends nothing.
//!
//! A session fans new events out to the endpoints (one delivery row per event and
//! endpoint, in commit order: [`deliveries::fan_out`]) and runs one loop per endpoint, so
//! a slow or dead receiver holds up only itself. Each loop leases a batch of deliveries —
//! at most one per cart, the cart's earliest, so a cart's events arrive in order — calls
//! them side by side, and marks each: delivered on a 2xx, else retried with doubling,
//! jittered waits. An event failing `CARTBUS_WEBHOOK_FAILING_AFTER` times marks its
//! endpoint `failing`: from then on one delivery is tried per retry cap, and the first 2xx
//! enables it again. A 410 disables the endpoint. A delivery whose mark never came (the
//! process died after the call) goes again when its lease lapses, with the same id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::drain::{Control, pause};
use super::webhook_call::{self, CallResult, Caller};
use super::worker::{self, Gate, MAX_BACKOFF, MIN_BACKOFF};
use crate::backoff::Backoff;
use crate::config::WebhookSettings;
use crate::domain::webhook::{EndpointState, retry_delay};
use crate::metrics::Metrics;
use crate::store::deliveries::{self, Attempt};
use crate::store::webhooks::{self, CONFIGURED, EndpointRow, NewEndpoint};
use crate::store::{Db, StoreError};

/// How long in-flight calls may finish once a session is told to stop (a pause, a
/// shutdown) before they are dropped; a dropped call's event goes again after its lease,
/// with the same id. Short: a pause waits for it before this instance reports drained.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Most deliveries one round of an endpoint claims and marks.
const MAX_BATCH: usize = 512;

/// What delivering needs; cheap to clone into each endpoint's loop.
#[derive(Clone)]
pub struct Deliverer {
    pub db: Db,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<WebhookSettings>,
    pub caller: Caller,
    /// `CARTBUS_INSTANCE`: the name on the leases.
    pub instance: String,
    /// The drain switch's view of this instance's consumer: while it works full batches
    /// (a backlog), deliveries give way to it.
    pub control: Arc<Control>,
    /// `CARTBUS_CONSUMER_BATCH`: what a full batch is.
    pub consumer_batch: usize,
}

/// Runs delivery until `stop`, where the drain switch lets this instance work.
pub async fn run(
    deliverer: Deliverer,
    consumer_enabled: bool,
    gate: Gate<'_>,
    stop: CancellationToken,
) {
    if !consumer_enabled {
        tracing::info!("webhook delivery off on this instance (CARTBUS_CONSUMER=off)");
        return;
    }
    worker::run(gate, &stop, Session { deliverer }).await;
}

struct Session {
    deliverer: Deliverer,
}

impl worker::Worker for Session {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn session(
        &mut self,
        stop: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> Result<(), String> {
        let d = &self.deliverer;
        let mut loops = JoinSet::new();
        // Each endpoint's loop, by its task: a loop that ends (its endpoint disabled)
        // while a new one runs for the same endpoint never takes the new one's place.
        let mut running: HashMap<String, (tokio::task::Id, CancellationToken)> = HashMap::new();
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut configured = false;
        while !stop.is_cancelled() {
            // A database that fails for a moment costs a pause here, not the endpoints'
            // loops and their calls in flight.
            let round = async {
                if !configured {
                    d.configure().await?;
                    configured = true;
                }
                let read = deliveries::fan_out(&d.db, Utc::now()).await?;
                Ok::<_, StoreError>((read, webhooks::list(&d.db).await?))
            };
            let (read, endpoints) = match round.await {
                Ok(round) => round,
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "webhook fan-out failed");
                    pause(stop, wait).await;
                    continue;
                }
            };
            backoff.reset();
            reconnect.reset();
            while let Some(ended) = loops.try_join_next_with_id() {
                let task = ended.as_ref().map_or_else(|e| e.id(), |(task, _)| *task);
                running.retain(|_, (id, _)| *id != task);
            }
            running.retain(|id, (_, token)| {
                let active = endpoints
                    .iter()
                    .any(|e| &e.id == id && e.state() != EndpointState::Disabled);
                if !active {
                    token.cancel();
                }
                active
            });
            for endpoint in endpoints {
                if endpoint.state() == EndpointState::Disabled || running.contains_key(&endpoint.id)
                {
                    continue;
                }
                let token = stop.child_token();
                let id = endpoint.id.clone();
                let task = loops.spawn(d.clone().endpoint_loop(endpoint.id, token.clone()));
                running.insert(id, (task.id(), token));
            }
            if (read as i64) < deliveries::FAN_OUT_BATCH {
                pause(stop, d.settings.poll).await;
            }
        }
        for (_, token) in running.values() {
            token.cancel();
        }
        if tokio::time::timeout(STOP_GRACE, async {
            while loops.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            loops.shutdown().await;
        }
        Ok(())
    }
}

/// What one round of an endpoint's loop did.
enum Round {
    Worked,
    Idle(Duration),
    /// The endpoint was disabled or deleted: the loop ends.
    Over,
}

impl Deliverer {
    /// Makes the endpoint of `CARTBUS_WEBHOOK_URL`, or brings it in line.
    async fn configure(&self) -> Result<(), StoreError> {
        let Some(configured) = &self.settings.configured else {
            // Set once and taken out of the configuration since: stop calling it.
            let reason = webhooks::URL_UNSET;
            let from = [EndpointState::Enabled, EndpointState::Failing];
            if webhooks::set_state(
                &self.db,
                CONFIGURED,
                &from,
                EndpointState::Disabled,
                Some(reason),
                None,
                Utc::now(),
            )
            .await?
            {
                tracing::warn!(endpoint = CONFIGURED, "webhook endpoint disabled: {reason}");
            }
            return Ok(());
        };
        webhooks::upsert_configured(
            &self.db,
            &NewEndpoint {
                id: CONFIGURED,
                url: configured.url.as_str(),
                description: "CARTBUS_WEBHOOK_URL",
                events: &configured.events,
                secrets: &configured.secrets,
            },
            Utc::now(),
        )
        .await
    }

    /// One endpoint's deliveries until `stop`; returns its id.
    async fn endpoint_loop(self, id: String, stop: CancellationToken) -> String {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // Deliveries per round: one round of calls at first, doubling while every call
        // of a full round is delivered (a busy receiver that answers gets big rounds, one
        // claim and one mark each), back to one round of calls on any failure (so that a
        // round of slow calls stays well inside its lease).
        let mut batch = self.settings.concurrency;
        while !stop.is_cancelled() {
            match self.round(&id, &mut batch).await {
                Ok(Round::Worked) => backoff.reset(),
                Ok(Round::Idle(wait)) => {
                    backoff.reset();
                    pause(&stop, wait).await;
                }
                Ok(Round::Over) => break,
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(endpoint = %id, error = %e, retry_in = ?wait, "webhook delivery round failed");
                    pause(&stop, wait).await;
                }
            }
        }
        id
    }

    async fn round(&self, id: &str, batch: &mut usize) -> Result<Round, StoreError> {
        let Some(endpoint) = webhooks::get(&self.db, id).await? else {
            return Ok(Round::Over);
        };
        let now = Utc::now();
        let settings = &self.settings;
        // Orders first: while this instance's consumer holds half a batch or more (a
        // backlog, after a pause say), one wave of calls per poll, so that delivery does
        // not take the database and the core from the drain; full rounds again after it.
        let yielding = endpoint.state() == EndpointState::Enabled && self.draining_backlog();
        let limit = match endpoint.state() {
            EndpointState::Disabled => return Ok(Round::Over),
            EndpointState::Failing => match endpoint.probe_at {
                Some(at) if at > now => {
                    let wait = (at - now).to_std().unwrap_or_default();
                    return Ok(Round::Idle(wait.min(settings.poll * 4)));
                }
                _ => 1,
            },
            EndpointState::Enabled if yielding => settings.concurrency,
            EndpointState::Enabled => *batch,
        };
        // Long enough for the round's calls, `concurrency` at a time, each up to the
        // timeout, and the mark.
        let waves = u32::try_from(limit.div_ceil(settings.concurrency)).unwrap_or(u32::MAX);
        let lease = self.caller.timeout() * (waves + 1) + Duration::from_secs(2);
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let claimed = deliveries::claim(&self.db, id, &self.instance, now, until, limit).await?;
        if claimed.is_empty() {
            return Ok(Round::Idle(settings.poll));
        }
        let Ok(url) = url::Url::parse(&endpoint.url) else {
            // Stored after a check; a row edited by hand is turned off, not called.
            webhooks::set_state(
                &self.db,
                id,
                &[EndpointState::Enabled, EndpointState::Failing],
                EndpointState::Disabled,
                Some("its URL does not parse"),
                None,
                now,
            )
            .await?;
            return Ok(Round::Over);
        };
        let secrets = endpoint.signing_secrets(now);
        // Up to `concurrency` calls at a time; each cart has one event in the round.
        let calls: Vec<_> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let body = webhook_call::body(&c.kind, c.created_at, &c.data);
                let call = self.caller.call(&url, &secrets, &c.event_id, body);
                async move { (i, call.await) }
            })
            .collect();
        let mut results: Vec<(usize, CallResult)> = futures::stream::iter(calls)
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<CallResult> = results.into_iter().map(|(_, r)| r).collect();
        let all_delivered = results
            .iter()
            .all(|r| matches!(r, CallResult::Delivered(_)));
        *batch = match (all_delivered, claimed.len() >= *batch) {
            (true, true) => (*batch * 2).min(MAX_BATCH),
            (true, false) => *batch,
            (false, _) => settings.concurrency,
        };
        // Test-only: die between the calls and their marks.
        crate::fault::freeze_if_hit("webhook-before-mark").await;
        let done = Utc::now();
        let mut attempts = Vec::with_capacity(claimed.len());
        let (mut gone, mut delivered, mut exhausted) = (false, false, None);
        for (c, result) in claimed.iter().zip(&results) {
            self.metrics.webhooks.call(result.outcome());
            let failed = match result {
                CallResult::Delivered(_) => {
                    delivered = true;
                    None
                }
                other => {
                    let tries = u32::try_from(c.attempts).unwrap_or(0) + 1;
                    gone |= *other == CallResult::Gone;
                    let wait = retry_delay(
                        tries,
                        settings.retry_base,
                        settings.retry_cap,
                        rand::random(),
                    );
                    let error = other.error(self.caller.timeout()).unwrap_or_default();
                    if tries >= settings.failing_after && exhausted.is_none() {
                        let times = match tries {
                            1 => "once".to_string(),
                            n => format!("{n} times"),
                        };
                        exhausted = Some(format!(
                            "event {} failed {times}; last: {error}",
                            c.event_id
                        ));
                    }
                    Some((
                        error,
                        done + chrono::Duration::from_std(wait).unwrap_or_default(),
                    ))
                }
            };
            attempts.push(Attempt {
                id: c.id,
                cart_id: c.cart_id,
                event_seq: c.event_seq,
                status: result.status(),
                failed,
            });
        }
        deliveries::record(&self.db, id, &self.instance, &attempts, done).await?;
        self.next_state(&endpoint, gone, delivered, exhausted, done)
            .await?;
        if yielding {
            return Ok(Round::Idle(settings.poll));
        }
        Ok(Round::Worked)
    }

    /// This instance's consumer holds at least half a batch: carts are waiting on the
    /// queue (one that keeps up with intake takes small batches).
    fn draining_backlog(&self) -> bool {
        self.control.in_flight() >= self.consumer_batch.div_ceil(2)
    }

    /// An endpoint's state after a round: 410 disables it, a 2xx ends `failing`, running
    /// out of retries starts it; a failing endpoint's failed probe sets the next one.
    async fn next_state(
        &self,
        endpoint: &EndpointRow,
        gone: bool,
        delivered: bool,
        exhausted: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        use EndpointState::{Disabled, Enabled, Failing};
        let id = endpoint.id.as_str();
        let probe_at =
            now + chrono::Duration::from_std(self.settings.retry_cap).unwrap_or_default();
        let state = endpoint.state();
        if gone {
            let reason = "the receiver answered 410 Gone: enable it again once it takes events";
            if webhooks::set_state(
                &self.db,
                id,
                &[Enabled, Failing],
                Disabled,
                Some(reason),
                None,
                now,
            )
            .await?
            {
                tracing::warn!(
                    endpoint = id,
                    "webhook endpoint disabled: its receiver answered 410 Gone"
                );
            }
        } else if state == Failing && delivered {
            if webhooks::set_state(&self.db, id, &[Failing], Enabled, None, None, now).await? {
                tracing::info!(endpoint = id, "webhook endpoint answers again: enabled");
            }
        } else if state == Failing {
            webhooks::set_state(
                &self.db,
                id,
                &[Failing],
                Failing,
                endpoint.state_reason.as_deref(),
                Some(probe_at),
                now,
            )
            .await?;
        } else if let Some(reason) = exhausted
            && webhooks::set_state(
                &self.db,
                id,
                &[Enabled],
                Failing,
                Some(&reason),
                Some(probe_at),
                now,
            )
            .await?
        {
            tracing::warn!(endpoint = id, reason = %reason, "webhook endpoint failing: probed once per retry cap until it answers");
        }
        Ok(())
    }
}
