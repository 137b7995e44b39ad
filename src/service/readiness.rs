//! What this instance can do right now: readiness, and whether it may write orders.

use std::sync::atomic::{AtomicBool, Ordering};

use super::drain::Control;

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

/// Orders can be written: the database answers, has our schema, and no newer version
/// has migrated it past what this binary knows (fenced).
pub fn can_write_orders(health: &Health, control: &Control) -> bool {
    health.database_up() && health.migrated() && !control.is_fenced()
}
