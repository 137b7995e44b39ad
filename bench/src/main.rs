//! cartbus-bench: measures cartbus against the raw speed of its parts, side by side in one
//! run, and prints a table (and writes it as JSON).
//!
//! - `cartbus-bench run` ([`run`]): the whole table, for the embedded defaults and for
//!   PostgreSQL + RabbitMQ, with cartbus running as a child process.
//! - `cartbus-bench amqp-publish` ([`amqp_publish`]): raw fe2o3-amqp publishing against
//!   cartbus's own publisher, on one fresh durable queue of a real broker.

mod amqp_publish;
mod cli;
mod cpu;
mod databases;
mod load;
mod open_loop;
mod phases;
mod raw_amqp;
mod raw_db;
mod receiver;
mod report;
mod run;
mod service;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::AmqpPublish(args) => amqp_publish::run(args).await,
    }
}
