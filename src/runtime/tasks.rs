//! The background workers, each given the parts of `App` it needs.

use tokio::sync::mpsc::{Receiver, Sender};
use tokio_util::sync::CancellationToken;

use super::app::{App, AppState};
use crate::service::consumer::{self, CartStep, Consumer};
use crate::service::dispatch::{self, Dispatch, Fresh};
use crate::service::drain;
use crate::service::hand_off::HandOff;
use crate::service::relay::{self, Relay};
use crate::service::replies::{self, ReplyStep};
use crate::service::webhook_call::Caller;
use crate::service::webhooks::{self, Deliverer};

pub async fn drain_watch(app: AppState, stop: CancellationToken) {
    drain::watch(&app.db, &app.control, &app.health, stop).await;
}

/// A consumer; with `line`, it hands the orders it writes to the dispatcher.
pub async fn consumer(app: AppState, stop: CancellationToken, line: Option<Sender<Fresh>>) {
    let config = &app.config;
    let consumer = Consumer {
        step: CartStep {
            db: &app.db,
            metrics: &app.metrics,
            payments: app.payments.as_deref(),
            control: &app.control,
            dispatch: line.as_ref().map(|line| Dispatch {
                line,
                queue: app.outbox_queue.as_ref(),
                settings: &config.fulfilment,
                instance: &config.instance,
                control: &app.control,
            }),
            outbox_wake: &app.outbox_wake,
            cart_address: &config.queue.cart_address,
            max_attempts: config.consumer.max_attempts,
        },
        queue: app.queue.as_ref(),
        batch: config.consumer.batch,
        enabled: config.consumer.enabled,
    };
    consumer::run(consumer, app.gate(), stop).await;
}

pub async fn replies(app: AppState, stop: CancellationToken) {
    let step = ReplyStep {
        db: &app.db,
        metrics: &app.metrics,
        settings: &app.config.fulfilment,
    };
    replies::run(
        step,
        app.queue.as_ref(),
        app.config.consumer.enabled,
        app.gate(),
        stop,
    )
    .await;
}

/// The dispatcher at the other end of the consumers' `line`.
pub async fn dispatcher(app: AppState, line: Receiver<Fresh>) {
    dispatch::run(hand_off(&app), &app.control, line).await;
}

fn hand_off(app: &App) -> HandOff<'_> {
    HandOff {
        db: &app.db,
        queue: app.outbox_queue.as_ref(),
        metrics: &app.metrics,
        settings: &app.config.fulfilment,
    }
}

pub async fn relay(app: AppState, stop: CancellationToken) {
    let relay = Relay {
        hand_off: hand_off(&app),
        instance: &app.config.instance,
        wake: &app.outbox_wake,
    };
    relay::run(relay, app.config.consumer.enabled, app.gate(), stop).await;
}

/// Webhook delivery to the storefront's receivers.
pub async fn webhooks(app: AppState, stop: CancellationToken) {
    let config = &app.config;
    let caller = match Caller::new(&config.webhooks, &config.version) {
        Ok(caller) => caller,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery off: its HTTP client could not be built");
            return;
        }
    };
    let deliverer = Deliverer {
        db: app.db.clone(),
        metrics: app.metrics.clone(),
        settings: std::sync::Arc::new(config.webhooks.clone()),
        caller,
        instance: config.instance.clone(),
        control: app.control.clone(),
        consumer_batch: config.consumer.batch,
    };
    webhooks::run(deliverer, config.consumer.enabled, app.gate(), stop).await;
}
