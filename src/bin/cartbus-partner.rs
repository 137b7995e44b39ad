//! `cartbus-partner`: a simulated transport partner for demos and tests. It reads the same
//! settings as cartbus (CARTBUS_QUEUE_URL, CARTBUS_DATA_DIR, CARTBUS_PARTNER_<NAME>_*,
//! CARTBUS_STATUS_ADDRESS), takes the named partner's new-order messages and answers each
//! with signed status replies.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use cartbus::config::Config;
use cartbus::service::partner_simulator::{self as simulator, SimulatorOptions, SimulatorStats};

#[derive(Parser)]
#[command(
    name = "cartbus-partner",
    version,
    about = "A simulated transport partner"
)]
struct Args {
    /// The partner to play, as named in CARTBUS_ROUTES; its secret comes from
    /// CARTBUS_PARTNER_<NAME>_SECRET.
    #[arg(long)]
    partner: String,
    /// Milliseconds before answering `received_by_partner`.
    #[arg(long, default_value_t = 200)]
    receive_after_ms: u64,
    /// Milliseconds between `received_by_partner` and `shipped`.
    #[arg(long, default_value_t = 2_000)]
    ship_after_ms: u64,
    /// Also report `delivered`, this many milliseconds after `shipped`.
    #[arg(long)]
    deliver_after_ms: Option<u64>,
    /// Send every reply twice (cartbus must ignore the second).
    #[arg(long)]
    duplicates: bool,
    /// Sign every Nth reply with a wrong key (cartbus must dead-letter it); 0 = never.
    #[arg(long, default_value_t = 0)]
    bad_signature_every: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(None) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cartbus-partner: {e}");
            return ExitCode::from(2);
        }
    };
    cartbus::telemetry::init(&config.log.filter, config.log.json);
    let name = args.partner.to_ascii_lowercase();
    let Some(partner) = config.fulfilment.partner(&name) else {
        eprintln!(
            "cartbus-partner: unknown partner {name:?}: name it in CARTBUS_ROUTES or set CARTBUS_PARTNER_{}_SECRET",
            name.to_ascii_uppercase()
        );
        return ExitCode::from(2);
    };
    let Some(secret) = &partner.secret else {
        eprintln!(
            "cartbus-partner: set CARTBUS_PARTNER_{}_SECRET (the key its replies are signed with)",
            name.to_ascii_uppercase()
        );
        return ExitCode::from(2);
    };
    let options = SimulatorOptions {
        partner: name.clone(),
        secret: secret.expose_secret().as_bytes().to_vec(),
        inbox: partner.address.clone(),
        reply_to: config.fulfilment.status_address.clone(),
        receive_after: Duration::from_millis(args.receive_after_ms),
        ship_after: Duration::from_millis(args.ship_after_ms),
        deliver_after: args.deliver_after_ms.map(Duration::from_millis),
        duplicates: args.duplicates,
        bad_signature_every: args.bad_signature_every,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cartbus-partner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let db = match cartbus::store::Db::connect_lazy(&config) {
            Ok(db) => db,
            Err(e) => {
                eprintln!("cartbus-partner: DATABASE_URL is not usable: {e}");
                return ExitCode::from(2);
            }
        };
        let queue = cartbus::open_queue(&config, &db, &cartbus::metrics::Metrics::new()).await;
        let stop = CancellationToken::new();
        let stats = Arc::new(SimulatorStats::default());
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
        }
        let result = simulator::run(queue.clone(), options, stats.clone(), stop).await;
        queue.shutdown().await;
        eprintln!(
            "cartbus-partner {name}: {} orders, {} replies ({} badly signed)",
            stats.orders.load(Ordering::Relaxed),
            stats.replies.load(Ordering::Relaxed),
            stats.bad_signatures.load(Ordering::Relaxed)
        );
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cartbus-partner: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
