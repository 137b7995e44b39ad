//! The one state type every handler and background task shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::service::drain::Control;
use crate::service::payment::Gateway;
use crate::store::Db;

pub type AppState = Arc<App>;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub queue: Arc<dyn Queue>,
    /// What the fulfilment relay sends on: for a broker, its own connection, so that a
    /// partner address that fails cannot disturb checkouts.
    pub outbox_queue: Arc<dyn Queue>,
    /// Wakes this instance's relay when orders were just written.
    pub outbox_wake: tokio::sync::Notify,
    pub metrics: Metrics,
    pub health: Health,
    pub control: Control,
    /// One per checkout being handled; none left = shed (`CARTBUS_MAX_IN_FLIGHT`).
    pub intake_permits: Arc<tokio::sync::Semaphore>,
    /// The payment capture endpoint, when one is configured.
    pub payments: Option<Gateway>,
    /// Wrong admin credentials by client, to hold guessers off.
    pub admin_failures: crate::runtime::auth_failures::AuthFailures,
    /// Bulk dead-letter resubmits running in this process.
    pub resubmit_jobs: crate::service::resubmit_jobs::Running,
}

/// What readiness is made of; written by the health monitor and by the shutdown path.
#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    database_up: AtomicBool,
    migrated: AtomicBool,
}

impl Health {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }
    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }
    /// The database carries this binary's schema, so orders may be written.
    pub fn migrated(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
    }
    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::Relaxed);
    }
}

impl App {
    /// Orders can be written: the database answers, has our schema, and no newer version
    /// has migrated it past what this binary knows (fenced).
    pub fn can_write_orders(&self) -> bool {
        self.health.database_up() && self.health.migrated() && !self.control.is_fenced()
    }

    /// Ready for traffic: not stopping, and a cart can go somewhere.
    pub fn is_ready(&self) -> bool {
        !self.health.shutting_down() && (self.queue.is_healthy() || self.can_write_orders())
    }
}
