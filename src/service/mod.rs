//! Services: what cartbus does, written once. Each takes the parts it needs (the
//! database, the queue, small settings) and is called by HTTP handlers and background
//! tasks alike.

pub mod conflicts;
pub mod consumer;
pub mod dispatch;
pub mod drain;
pub mod hand_off;
pub mod intake;
pub mod partner_simulator;
pub mod payment;
pub mod place;
pub mod readiness;
pub mod relay;
pub mod replies;
pub mod resubmit;
pub mod resubmit_jobs;
pub mod smoke;
pub mod webhook_call;
pub mod webhooks;
pub mod worker;
