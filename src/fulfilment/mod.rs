//! Fulfilment (DESIGN §7): the outbox relay that hands orders to transport partners, the
//! partners' signed status replies, and a partner simulator for tests and demos.

pub mod message;
pub mod relay;
pub mod replies;
pub mod settings;
pub mod simulator;
pub mod store;
