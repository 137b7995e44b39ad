//! The running service: `App` (the one state type), its background tasks, readiness, and
//! the figures sampled at scrape time.

pub mod app;
pub mod auth_failures;
pub mod health;
pub mod sample;
pub mod tasks;
