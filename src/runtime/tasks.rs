//! The background workers, each given the parts of `App` it needs.

use tokio_util::sync::CancellationToken;

use super::app::AppState;
use crate::service::consumer::{self, CartStep, Consumer};
use crate::service::drain;
use crate::service::relay::{self, Relay};
use crate::service::replies::{self, ReplyStep};

pub async fn drain_watch(app: AppState, stop: CancellationToken) {
    drain::watch(&app.db, &app.control, &app.health, stop).await;
}

pub async fn consumer(app: AppState, stop: CancellationToken) {
    let config = &app.config;
    let consumer = Consumer {
        step: CartStep {
            db: &app.db,
            metrics: &app.metrics,
            payments: app.payments.as_deref(),
            control: &app.control,
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

pub async fn relay(app: AppState, stop: CancellationToken) {
    let relay = Relay {
        db: &app.db,
        queue: app.outbox_queue.as_ref(),
        metrics: &app.metrics,
        settings: &app.config.fulfilment,
        instance: &app.config.instance,
        wake: &app.outbox_wake,
    };
    relay::run(relay, app.config.consumer.enabled, app.gate(), stop).await;
}
