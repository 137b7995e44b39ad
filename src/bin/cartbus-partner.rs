//! `cartbus-partner`: a simulated transport partner for demos and tests. It reads the same
//! settings as cartbus (CARTBUS_QUEUE_URL, CARTBUS_DATA_DIR, CARTBUS_PARTNER_<NAME>_*,
//! CARTBUS_STATUS_ADDRESS), takes the named partner's new-order messages and answers each
//! with signed status replies. With `--site eu=amqp://… --site us=amqp://…` it serves
//! several datacenters at once and answers each order on the broker the order names.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use cartbus::config::{Config, QueueConfig};
use cartbus::service::partner_simulator::{
    self as simulator, Journal, SimulatorOptions, SimulatorSite, SimulatorStats,
};

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
    /// A datacenter to serve, `NAME=amqp://user:pass@host:port/vhost` (its
    /// CARTBUS_DATACENTER and broker); repeat for each site. The key for a site is
    /// CARTBUS_SITE_<NAME>_SECRET where that site's cartbus has its own, else the
    /// partner's. Without it: the one broker of CARTBUS_QUEUE_URL.
    #[arg(long = "site", value_name = "NAME=URL")]
    sites: Vec<String>,
    /// Append one JSON line per order taken and per reply sent (which site each).
    #[arg(long, value_name = "FILE")]
    journal: Option<std::path::PathBuf>,
}

/// A site as given on the command line, its settings loaded.
struct SiteConfig {
    name: String,
    config: Config,
    secret: Vec<u8>,
}

/// The sites to serve: each `--site` with the environment's settings and its own broker,
/// or, without any, the environment's one broker.
fn site_configs(args: &Args, base: Config, secret: &[u8]) -> Result<Vec<SiteConfig>, String> {
    if args.sites.is_empty() {
        let name = base
            .fulfilment
            .datacenter()
            .unwrap_or("default")
            .to_string();
        return Ok(vec![SiteConfig {
            name,
            config: base,
            secret: secret.to_vec(),
        }]);
    }
    let environment: Vec<(String, String)> = std::env::vars().collect();
    let mut sites: Vec<SiteConfig> = Vec::new();
    for given in &args.sites {
        let Some((name, url)) = given.split_once('=') else {
            return Err(format!(
                "--site takes NAME=URL; {:?} has no `=`",
                redact(given)
            ));
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "--site takes NAME=URL, NAME being the site's CARTBUS_DATACENTER; {:?} does not start with one",
                redact(given)
            ));
        }
        if sites.iter().any(|site| site.name == name) {
            return Err(format!("--site {name} is given twice"));
        }
        let vars = environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| {
                !matches!(
                    *k,
                    "CARTBUS_QUEUE_URL" | "CARTBUS_DATACENTER" | "CARTBUS_REPLY_BROKER"
                )
            })
            .chain([
                ("CARTBUS_QUEUE_URL", url.trim()),
                ("CARTBUS_DATACENTER", name.as_str()),
            ]);
        let config = Config::from_vars(vars).map_err(|e| format!("--site {name}: {e}"))?;
        let own = format!(
            "CARTBUS_SITE_{}_SECRET",
            name.to_ascii_uppercase().replace('-', "_")
        );
        let secret = match std::env::var(&own) {
            Ok(key) if key.len() >= 16 && key.trim() == key => key.into_bytes(),
            Ok(_) => {
                return Err(format!(
                    "{own} must be at least 16 characters with no surrounding whitespace (value not shown)"
                ));
            }
            Err(_) => secret.to_vec(),
        };
        sites.push(SiteConfig {
            name,
            config,
            secret,
        });
    }
    Ok(sites)
}

/// `NAME=URL` with any `user:pass@` cut out (up to the last `@`, which may follow one in
/// the password), for an error message.
fn redact(given: &str) -> String {
    match given.rsplit_once('@') {
        Some((before, after)) => match before.split_once("//") {
            Some((scheme, _)) => format!("{scheme}//…@{after}"),
            None => format!("…@{after}"),
        },
        None => given.to_string(),
    }
}

/// The broker's public identifiers, as a new-order's `reply_broker` names them.
fn brokers(config: &Config) -> Vec<String> {
    let mut ids: Vec<String> = match &config.queue.backend {
        QueueConfig::Amqp(broker) => broker.nodes.iter().map(|node| node.public_id()).collect(),
        QueueConfig::Embedded { .. } => Vec::new(),
    };
    if let Some(site) = &config.fulfilment.site
        && let Some(id) = &site.reply_broker
    {
        ids.push(id.clone());
    }
    ids
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
    let secret = secret.expose_secret().as_bytes().to_vec();
    let journal = match &args.journal {
        None => None,
        Some(path) => match Journal::create(path) {
            Ok(journal) => Some(journal),
            Err(e) => {
                eprintln!(
                    "cartbus-partner: cannot open --journal {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
    };
    let options = SimulatorOptions {
        partner: name.clone(),
        inbox: partner.address.clone(),
        reply_to: config.fulfilment.status_address.clone(),
        receive_after: Duration::from_millis(args.receive_after_ms),
        ship_after: Duration::from_millis(args.ship_after_ms),
        deliver_after: args.deliver_after_ms.map(Duration::from_millis),
        duplicates: args.duplicates,
        bad_signature_every: args.bad_signature_every,
        journal,
    };
    let site_configs = match site_configs(&args, config, &secret) {
        Ok(sites) => sites,
        Err(e) => {
            eprintln!("cartbus-partner: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cartbus-partner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut sites = Vec::with_capacity(site_configs.len());
        for site in site_configs {
            let db = match cartbus::store::Db::connect_lazy(&site.config) {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("cartbus-partner: DATABASE_URL is not usable: {e}");
                    return ExitCode::from(2);
                }
            };
            let metrics = cartbus::metrics::Metrics::new();
            sites.push(SimulatorSite {
                queue: cartbus::open_queue(&site.config, &db, &metrics).await,
                brokers: brokers(&site.config),
                name: site.name,
                secret: site.secret,
            });
        }
        let queues: Vec<_> = sites.iter().map(|site| site.queue.clone()).collect();
        let stop = CancellationToken::new();
        let stats = Arc::new(SimulatorStats::default());
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
        }
        let result = simulator::run(sites, options, stats.clone(), stop).await;
        for queue in queues {
            queue.shutdown().await;
        }
        eprintln!(
            "cartbus-partner {name}: {} orders, {} replies ({} badly signed, {} for a site not served)",
            stats.orders.load(Ordering::Relaxed),
            stats.replies.load(Ordering::Relaxed),
            stats.bad_signatures.load(Ordering::Relaxed),
            stats.unrouted.load(Ordering::Relaxed)
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
