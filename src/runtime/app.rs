//! The one state type every handler and background task shares.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueConnection};
use crate::service::drain::{self, Control};
use crate::service::intake::Intake;
use crate::service::payment::Gateway;
use crate::service::readiness::{self, Health};
use crate::service::resubmit::Resubmitter;
use crate::service::worker::Gate;
use crate::store::switch::{InstanceRow, Switch};
use crate::store::{Db, StoreError};

pub type AppState = Arc<App>;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub queue: Arc<dyn Queue>,
    /// What the fulfilment relay sends on: for a broker, its own connection, so that a
    /// partner address that fails cannot disturb checkouts.
    pub outbox_queue: Arc<dyn Queue>,
    /// Wakes this instance's relay when orders were just written.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub control: Arc<Control>,
    /// One per checkout being handled; none left = shed (`CARTBUS_MAX_IN_FLIGHT`).
    pub intake_permits: Arc<tokio::sync::Semaphore>,
    /// The payment capture endpoint, when one is configured.
    pub payments: Option<Arc<Gateway>>,
    /// Taking checkouts in (the queue, or the order written directly).
    pub intake: Intake,
    /// Wrong admin credentials by client, to hold guessers off.
    pub admin_failures: crate::runtime::auth_failures::AuthFailures,
    /// Resubmitting dead letters, one or in bulk.
    pub resubmitter: Resubmitter,
    /// Held while a smoke run goes on here: one at a time, as they share the scratch
    /// address.
    pub smoke_running: Arc<tokio::sync::Mutex<()>>,
}

impl App {
    /// Orders can be written: the database answers, has our schema, and no newer version
    /// has migrated it past what this binary knows (fenced).
    /// The drain switch, this instance's view of the others, and whether all are drained.
    pub async fn drain_state(&self) -> Result<(Switch, Vec<InstanceRow>, bool), StoreError> {
        drain::drain_state(&self.db, &self.control).await
    }

    /// The drain switch as `GET /v1/admin/consumer` shows it.
    pub async fn drain_status(&self) -> Result<drain::Status, StoreError> {
        let mut status = drain::status(
            &self.db,
            &self.control,
            self.queue.as_ref(),
            &self.config.queue.cart_address,
        )
        .await?;
        status.broker_connections = self.broker_connections();
        status.datacenter = self.config.fulfilment.datacenter().map(str::to_string);
        Ok(status)
    }

    /// This instance's broker connections (intake and hand-off) and their nodes.
    pub fn broker_connections(&self) -> Vec<QueueConnection> {
        let mut all = self.queue.connections();
        if !Arc::ptr_eq(&self.queue, &self.outbox_queue) {
            all.extend(self.outbox_queue.connections());
        }
        all.sort_by(|a, b| a.connection.cmp(&b.connection));
        all
    }

    pub async fn backlog(&self) -> drain::Backlog {
        drain::backlog(
            &self.control,
            self.queue.as_ref(),
            &self.config.queue.cart_address,
        )
        .await
    }

    /// What a background worker checks before it works.
    pub fn gate(&self) -> Gate<'_> {
        Gate {
            control: &self.control,
            health: &self.health,
        }
    }

    pub fn can_write_orders(&self) -> bool {
        readiness::can_write_orders(&self.health, &self.control)
    }

    /// Ready for traffic: not stopping, and a cart can go somewhere.
    pub fn is_ready(&self) -> bool {
        !self.health.shutting_down() && (self.queue.is_healthy() || self.can_write_orders())
    }
}
