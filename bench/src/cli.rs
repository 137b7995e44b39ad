//! The command line: the two subcommands and their flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cartbus-bench",
    about = "cartbus against the raw speed of its parts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The whole table: raw parts vs cartbus, embedded and PostgreSQL + RabbitMQ.
    Run(RunArgs),
    /// Raw fe2o3-amqp publishing (one at a time and windowed) vs cartbus's publisher.
    AmqpPublish(AmqpPublishArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Which stacks: embedded, broker (PostgreSQL + RabbitMQ) or both.
    #[arg(long, default_value = "both")]
    pub stack: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Carts queued (with the consumer paused) and then drained.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: usize,
    /// Seconds of load for the time-bounded phases (direct write, mixed, shedding).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Carts per consumer transaction (CARTBUS_CONSUMER_BATCH) and per raw batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Run with the fulfilment hand-off on (`CARTBUS_ROUTES`, a relay sending every order
    /// to a partner queue alongside the drain), as production does; `--no-hand-off` to
    /// see what it costs.
    #[arg(long = "no-hand-off", action = clap::ArgAction::SetFalse)]
    pub hand_off: bool,
    /// Deliver every order event to a webhook receiver in this process (signatures
    /// checked) while the phases run; `--no-webhooks` to see what delivery costs.
    #[arg(long = "no-webhooks", action = clap::ArgAction::SetFalse)]
    pub webhooks: bool,
    /// Seconds of each open-loop run of the sustained-capacity search (0 skips it).
    #[arg(long, default_value_t = 60)]
    pub sustain_seconds: u64,
    /// Open-loop runs in the sustained-capacity search (a bisection of the rate).
    #[arg(long, default_value_t = 4)]
    pub sustain_steps: u32,
    /// Backlog for the memory figure (embedded queue).
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_backlog: usize,
    /// PostgreSQL URL on which the bench may create databases (broker stack).
    #[arg(
        long,
        env = "CARTBUS_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// RabbitMQ with AMQP 1.0 (broker stack).
    #[arg(
        long,
        env = "CARTBUS_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    pub amqp: String,
    /// Give the load generator and cartbus a core each (`taskset`): this process on the
    /// first core, cartbus on the second, and the raw figures measured on cartbus's core.
    /// PostgreSQL and RabbitMQ stay unpinned.
    #[arg(long)]
    pub pin: bool,
    /// Where to write the table as JSON.
    #[arg(long, default_value = "bench-results/run.json")]
    pub json: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct AmqpPublishArgs {
    /// Broker URL (amqp://user:pass@host:port).
    #[arg(
        long,
        env = "CARTBUS_QUEUE_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    pub url: String,
    /// Messages per windowed run.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Messages for the one-at-a-time run (it is slow).
    #[arg(long, default_value_t = 2_000)]
    pub serial_count: usize,
    /// Unsettled sends in flight for the windowed runs.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Concurrent callers of cartbus's publisher (like HTTP requests).
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// Where to write the table as JSON.
    #[arg(long, default_value = "bench-results/amqp-publish.json")]
    pub json: PathBuf,
}
