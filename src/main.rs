use std::path::PathBuf;

/// The drain and intake paths allocate per cart (JSON, rows); glibc's malloc showed ~14 %
/// of the drain's profile, mimalloc is faster at this many small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cartbus::Application;
use cartbus::config::Config;

#[derive(Parser)]
#[command(name = "cartbus", version, about = "Queue-buffered checkout service")]
struct Cli {
    /// TOML file with settings; environment variables override it.
    #[arg(long, global = true, env = "CARTBUS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Print every effective setting (as `serve` would load it), where its value came
    /// from and its `--config` key; secrets redacted. Exit 2 if a setting is invalid.
    Config,
    /// The drain switch of running instances: status, pause, resume (via the admin API).
    Consumer(cartbus::cli::ConsumerArgs),
    /// A smoke checkout of one instance (its admin API): carts through its whole path,
    /// nothing kept; exit 0 when all came out as expected, 2 when not.
    Smoke(cartbus::cli::smoke::SmokeArgs),
    /// Work with the broker named by CARTBUS_QUEUE_URL.
    Broker {
        #[command(subcommand)]
        command: BrokerCommand,
    },
}

#[derive(Subcommand)]
enum BrokerCommand {
    /// Declare every queue cartbus uses (carts, their dead letters, and with the hand-off
    /// on the status, audit and partner queues) and route rejected carts to the
    /// dead-letter queue; quorum queues and the policy need CARTBUS_BROKER_MANAGEMENT_URL.
    Setup {
        /// Name of the dead-letter queue; default: the cart queue's name + ".dlq".
        #[arg(long)]
        dead_letter_queue: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        let document = cartbus::http::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises");
        println!("{document}");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Consumer(args)) = cli.command {
        // A client of a running service: it needs none of the service's settings.
        return match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(cartbus::cli::consumer(args)),
            Err(e) => {
                eprintln!("cartbus: cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Smoke(args)) = cli.command {
        return match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(cartbus::cli::smoke::smoke(args)),
            Err(e) => {
                eprintln!("cartbus: cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Config) = cli.command {
        return cartbus::cli::config(cli.config.as_deref());
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cartbus: {e}");
            return ExitCode::from(2);
        }
    };
    cartbus::telemetry::init(&config.log.filter, config.log.json);
    // Fail points do nothing unless built for tests (see Cargo.toml).
    let _fail_points = fail::FailScenario::setup();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cartbus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Broker {
                command: BrokerCommand::Setup { dead_letter_queue },
            }) => cartbus::cli::broker::setup(&config, dead_letter_queue).await,
            Some(Command::Migrate) => {
                cartbus::store::migrate_url(&config.database.url, &config.database.kind).await?;
                tracing::info!(database = ?config.database.kind, "migrations applied");
                Ok(())
            }
            _ => serve(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cartbus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let application = Application::build(config).await?;
    let shutdown = application.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    tracing::info!(address = %application.local_addr(), "cartbus listening");
    application.run_until_stopped().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
