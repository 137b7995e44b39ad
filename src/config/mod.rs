//! Every setting, its default and its validation.
//!
//! Layers: built-in defaults ← optional TOML file (`--config`) ← environment. A bad value
//! stops start-up with a message naming the environment variable that sets it. Secrets are
//! wrapped in [`SecretString`] from the moment they are read, so they never print.

pub mod fulfilment;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use fulfilment::{FulfilmentSettings, RawFulfilment};

/// Where orders live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// Where carts wait between intake and the consumer.
#[derive(Clone, Debug)]
pub enum QueueConfig {
    /// The embedded durable queue in its own SQLite file.
    Embedded { path: PathBuf },
    /// An AMQP 1.0 broker.
    Amqp(AmqpConfig),
}

/// A broker endpoint from `CARTBUS_QUEUE_URL=amqp[s]://user:pass@host:port/vhost`.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// SASL PLAIN credentials (for Azure Service Bus: SAS key name and key).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// RabbitMQ virtual host, sent as the open frame's hostname `vhost:NAME`.
    pub vhost: Option<String>,
    pub connect_timeout: Duration,
    /// Most unsettled sends in flight at once, shared by all requests.
    pub window: usize,
    /// Most deliveries the consumer holds (received, not yet settled).
    pub prefetch: u32,
    /// PEM certificates trusted for `amqps://` besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl AmqpConfig {
    /// `host:port`, for logs (never the credentials).
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "amqps" } else { "amqp" },
            self.host,
            self.port
        )
    }
}

fn parse_amqp_url(raw: &str, limits: &BrokerLimits) -> Result<AmqpConfig, ConfigError> {
    const SETTING: &str = "CARTBUS_QUEUE_URL";
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            SETTING,
            format!("not a URL ({e}); value not shown: it may contain a password"),
        )
    })?;
    let tls = match url.scheme() {
        "amqp" => false,
        "amqps" => true,
        _ => unreachable!("only called for amqp and amqps URLs"),
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(SETTING, "has no host"))?
        .to_string();
    let username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url
        .password()
        .map(|p| SecretString::from(percent_decode(p)));
    if username.is_none() && password.is_some() {
        // It would silently log in anonymously (RabbitMQ 3.x then maps that to guest).
        return Err(invalid(
            SETTING,
            "has a password but no user name (value not shown)",
        ));
    }
    let vhost = match url.path() {
        "" | "/" => None,
        path => Some(percent_decode(&path[1..])),
    };
    Ok(AmqpConfig {
        tls,
        port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
        host,
        username,
        password,
        vhost,
        connect_timeout: limits.connect_timeout,
        window: limits.window,
        prefetch: limits.prefetch,
        ca_file: limits.ca_file.clone(),
    })
}

struct BrokerLimits {
    connect_timeout: Duration,
    window: usize,
    prefetch: u32,
    ca_file: Option<PathBuf>,
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub database_kind: DatabaseKind,
    pub database_max_connections: u32,
    pub queue: QueueConfig,
    pub cart_address: String,
    pub instance: String,
    pub version: String,
    pub admin_token: Option<SecretString>,
    pub storefront_key: Option<SecretString>,
    pub consumer_enabled: bool,
    pub consumer_batch: usize,
    /// Consumer tasks on this instance, each with its own receiver.
    pub consumers: usize,
    pub max_attempts: u32,
    /// Resubmits allowed per dead letter (`CARTBUS_RESUBMIT_LIMIT`), so that a poison
    /// message cannot be replayed forever.
    pub resubmit_limit: u32,
    pub lease: Duration,
    pub send_timeout: Duration,
    /// Checkouts handled at once; more are shed with 503.
    pub max_in_flight: usize,
    pub retry_after: Duration,
    pub request_timeout: Duration,
    /// Limits that keep slow, oversized or guessing clients from exhausting the server.
    pub hostile: HostileLimits,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub log: String,
    pub log_json: bool,
    /// The hand-off to transport partners and their replies (DESIGN §7).
    pub fulfilment: FulfilmentSettings,
    /// Payment capture (DESIGN §8): the endpoint carts are captured at before they become
    /// orders; none = no payment step.
    pub payment_url: Option<PaymentUrl>,
    pub payment_timeout: Duration,
    /// Sent as `Authorization: Bearer` to the payment endpoint.
    pub payment_token: Option<SecretString>,
}

/// What a client may hold or try before it is cut off (docs/operations.md#hostile-clients).
#[derive(Clone, Debug)]
pub struct HostileLimits {
    /// Open connections at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Whole request head (line and headers) must arrive within this; hyper also applies
    /// it to an idle keep-alive connection waiting for its next request.
    pub header_read_timeout: Duration,
    /// A request body must be read whole within this, however it trickles in.
    pub body_read_timeout: Duration,
    /// Largest request head in bytes, and most header fields; past either: 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Wrong admin credentials allowed per client address, and from all clients, in one
    /// window; past either, admin calls answer 429 until the window ends.
    pub admin_failures_per_client: u32,
    pub admin_failures_global: u32,
    pub admin_failure_window: Duration,
}

/// The payment endpoint. Its query string may carry a key, so it prints as scheme, host,
/// port and path only.
#[derive(Clone)]
pub struct PaymentUrl(url::Url);

impl PaymentUrl {
    fn parse(raw: &str) -> Result<PaymentUrl, ConfigError> {
        const SETTING: &str = "CARTBUS_PAYMENT_URL";
        let url = url::Url::parse(raw).map_err(|e| {
            invalid(
                SETTING,
                format!("not a URL ({e}); value not shown: it may contain a key"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(SETTING, "must be an http:// or https:// URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(SETTING, "has no host"));
        }
        Ok(PaymentUrl(url))
    }

    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl std::fmt::Display for PaymentUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or(""))?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

impl std::fmt::Debug for PaymentUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PaymentUrl({self})")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    /// A setting whose name is built from data (`CARTBUS_PARTNER_<NAME>_SECRET`).
    #[error("invalid setting {setting}: {message}")]
    Dynamic { setting: String, message: String },
    #[error("invalid configuration: {0}")]
    Source(String),
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// The settings as read from file and environment, before validation. Field names are the
/// environment names without the `CARTBUS_` prefix, lowercased.
#[derive(Deserialize)]
#[serde(default)]
struct Raw {
    #[serde(deserialize_with = "lenient_string")]
    listen: String,
    #[serde(deserialize_with = "lenient_string")]
    data_dir: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    database_url: Option<String>,
    database_max_connections: u32,
    #[serde(deserialize_with = "lenient_string")]
    queue_url: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    cart_address: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    instance: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    version: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    admin_token: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    storefront_key: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    consumer: String,
    consumer_batch: u32,
    consumers: u32,
    consumer_prefetch: u32,
    amqp_window: u32,
    amqp_connect_timeout_ms: u64,
    #[serde(deserialize_with = "lenient_opt_string")]
    amqp_ca_file: Option<String>,
    max_attempts: u32,
    resubmit_limit: u32,
    lease_seconds: u64,
    send_timeout_ms: u64,
    max_in_flight: u32,
    retry_after_seconds: u64,
    request_timeout_seconds: u64,
    max_connections: u32,
    header_read_timeout_seconds: u64,
    body_read_timeout_seconds: u64,
    max_header_bytes: u32,
    max_headers: u32,
    admin_auth_failures: u32,
    admin_auth_global_failures: u32,
    admin_auth_window_seconds: u64,
    shutdown_delay_seconds: u64,
    shutdown_timeout_seconds: u64,
    #[serde(deserialize_with = "lenient_string")]
    log: String,
    #[serde(deserialize_with = "lenient_string")]
    log_format: String,
    // Fulfilment (DESIGN §7); partners' own settings are read by key, see `from_figment`.
    #[serde(deserialize_with = "lenient_opt_string")]
    routes: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    audit_address: Option<String>,
    audit_threshold: i64,
    #[serde(deserialize_with = "lenient_opt_string")]
    status_address: Option<String>,
    relay_batch: u32,
    relay_lease_seconds: u64,
    relay_max_retries: u32,
    relay_retry_base_ms: u64,
    relay_poll_ms: u64,
    relay_workers: u32,
    #[serde(deserialize_with = "lenient_opt_string")]
    payment_url: Option<String>,
    payment_timeout_ms: u64,
    #[serde(deserialize_with = "lenient_opt_string")]
    payment_token: Option<String>,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./data".into(),
            database_url: None,
            database_max_connections: 16,
            queue_url: "embedded".into(),
            cart_address: None,
            instance: None,
            version: env!("CARGO_PKG_VERSION").into(),
            admin_token: None,
            storefront_key: None,
            consumer: "on".into(),
            consumer_batch: 256,
            consumers: 2,
            consumer_prefetch: 256,
            amqp_window: 256,
            amqp_connect_timeout_ms: 2000,
            amqp_ca_file: None,
            max_attempts: 5,
            resubmit_limit: 5,
            lease_seconds: 30,
            send_timeout_ms: 1000,
            max_in_flight: 1024,
            retry_after_seconds: 5,
            request_timeout_seconds: 30,
            max_connections: 1024,
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: 10,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            admin_auth_failures: 10,
            admin_auth_global_failures: 100,
            admin_auth_window_seconds: 300,
            shutdown_delay_seconds: 0,
            shutdown_timeout_seconds: 30,
            log: "info".into(),
            log_format: "text".into(),
            routes: None,
            audit_address: None,
            audit_threshold: 1_000_000,
            status_address: None,
            relay_batch: 32,
            relay_lease_seconds: 30,
            relay_max_retries: 10,
            relay_retry_base_ms: 1_000,
            relay_poll_ms: 500,
            relay_workers: 4,
            payment_url: None,
            payment_timeout_ms: 5000,
            payment_token: None,
        }
    }
}

/// Environment variables that are not `CARTBUS_`-prefixed but belong to the config.
const UNPREFIXED: &[(&str, &str)] = &[("DATABASE_URL", "database_url")];

impl Config {
    /// Reads defaults ← `file` ← the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(
            Self::figment(file, Env::prefixed("CARTBUS_"), Env::raw()),
            partner_vars(std::env::vars()),
        )
    }

    /// Reads defaults ← the given variables only; for tests and tools that must not see
    /// the process environment.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(&str, &str)> = vars.into_iter().collect();
        let partners = partner_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut figment = Figment::new();
        for (key, value) in vars {
            let name = match key.strip_prefix("CARTBUS_") {
                Some(rest) => rest.to_ascii_lowercase(),
                None => match UNPREFIXED.iter().find(|(env, _)| *env == key) {
                    Some((_, name)) => (*name).to_string(),
                    None => continue,
                },
            };
            // Parsed the way figment parses real environment variables.
            let value: figment::value::Value =
                value.parse().expect("parsing a value is infallible");
            figment = figment.merge((name, value));
        }
        Self::from_figment(figment, partners)
    }

    fn figment(file: Option<&Path>, prefixed: Env, raw: Env) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let unprefixed: Vec<&str> = UNPREFIXED.iter().map(|(env, _)| *env).collect();
        figment
            .merge(prefixed)
            .merge(raw.only(&unprefixed).map(|key| {
                let key = key.as_str();
                UNPREFIXED
                    .iter()
                    .find(|(env, _)| env.eq_ignore_ascii_case(key))
                    .map(|(_, name)| (*name).into())
                    .unwrap_or_else(|| key.into())
            }))
    }

    /// `environment_partners`: the `CARTBUS_PARTNER_*` variables as the environment holds
    /// them; they win over figment's reading, which takes an all-digit secret for a number
    /// (and would drop its leading zeros).
    fn from_figment(
        figment: Figment,
        environment_partners: Vec<(String, String)>,
    ) -> Result<Config, ConfigError> {
        let raw: Raw = figment.extract().map_err(|e| {
            let setting = e
                .path
                .first()
                .map(|key| env_name(key))
                .unwrap_or_else(|| "configuration".into());
            ConfigError::Source(format!("{setting}: {}", e.kind))
        })?;
        // `CARTBUS_PARTNER_<NAME>_*`: names not known in advance.
        let all: BTreeMap<String, figment::value::Value> = figment
            .extract()
            .map_err(|e| ConfigError::Source(e.to_string()))?;
        let mut partner_keys: BTreeMap<String, String> = all
            .into_iter()
            .filter(|(key, _)| key.starts_with("partner_"))
            .map(|(key, value)| {
                let text = match value {
                    figment::value::Value::String(_, s) => s,
                    figment::value::Value::Num(_, n) => n
                        .to_u128()
                        .map(|n| n.to_string())
                        .or_else(|| n.to_i128().map(|n| n.to_string()))
                        .or_else(|| n.to_f64().map(|n| n.to_string()))
                        .unwrap_or_default(),
                    figment::value::Value::Bool(_, b) => b.to_string(),
                    figment::value::Value::Char(_, c) => c.to_string(),
                    _ => String::new(),
                };
                (key, text)
            })
            .collect();
        partner_keys.extend(environment_partners);
        raw.validate(partner_keys.into_iter().collect())
    }

    /// Whether the admin API is switched on.
    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }
}

/// `CARTBUS_PARTNER_*` variables as (lower-case key without `CARTBUS_`, raw value).
fn partner_vars(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter_map(|(key, value)| {
        let rest = key.strip_prefix("CARTBUS_")?;
        rest.to_ascii_lowercase()
            .starts_with("partner_")
            .then(|| (rest.to_ascii_lowercase(), value))
    })
    .collect()
}

fn env_name(key: &str) -> String {
    match UNPREFIXED.iter().find(|(_, name)| *name == key) {
        Some((env, _)) => (*env).to_string(),
        None => format!("CARTBUS_{}", key.to_ascii_uppercase()),
    }
}

impl Raw {
    fn validate(self, partner_keys: Vec<(String, String)>) -> Result<Config, ConfigError> {
        // Before any field is moved out of `self`.
        let hostile = self.hostile_limits()?;
        let listen = self.listen.trim().parse::<SocketAddr>().map_err(|e| {
            invalid(
                "CARTBUS_LISTEN",
                format!("{e}; expected host:port, e.g. 127.0.0.1:8080"),
            )
        })?;
        let data_dir = PathBuf::from(non_empty("CARTBUS_DATA_DIR", &self.data_dir)?);

        let database_url = match self.database_url.as_deref().map(str::trim) {
            None | Some("") => format!("sqlite://{}", data_dir.join("cartbus.db").display()),
            Some(url) => url.to_string(),
        };
        let database_kind = if database_url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            DatabaseKind::Postgres
        } else {
            // Never echo the URL: it may carry a password.
            return Err(invalid(
                "DATABASE_URL",
                "must start with sqlite: or postgres:// (value not shown: it may contain a password)",
            ));
        };
        let database_max_connections = in_range(
            "CARTBUS_DATABASE_MAX_CONNECTIONS",
            self.database_max_connections,
            1,
            1000,
        )?;

        // Broker settings are checked even when the embedded queue is in use, so a typo
        // shows up before the day the broker is switched on.
        let broker_limits = BrokerLimits {
            connect_timeout: Duration::from_millis(in_range(
                "CARTBUS_AMQP_CONNECT_TIMEOUT_MS",
                self.amqp_connect_timeout_ms,
                100,
                60_000,
            )?),
            window: in_range("CARTBUS_AMQP_WINDOW", self.amqp_window, 1, 10_000)? as usize,
            prefetch: in_range(
                "CARTBUS_CONSUMER_PREFETCH",
                self.consumer_prefetch,
                1,
                10_000,
            )?,
            ca_file: match self.amqp_ca_file.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(path) => {
                    let path = PathBuf::from(path);
                    if !path.is_file() {
                        return Err(invalid(
                            "CARTBUS_AMQP_CA_FILE",
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                    Some(path)
                }
            },
        };
        let queue_url = self.queue_url.trim();
        let queue = if queue_url == "embedded" {
            QueueConfig::Embedded {
                path: data_dir.join("queue.db"),
            }
        } else if let Some(path) = queue_url.strip_prefix("embedded:") {
            let path = non_empty("CARTBUS_QUEUE_URL", path)?;
            QueueConfig::Embedded {
                path: PathBuf::from(path),
            }
        } else if queue_url.starts_with("amqp://") || queue_url.starts_with("amqps://") {
            QueueConfig::Amqp(parse_amqp_url(queue_url, &broker_limits)?)
        } else {
            return Err(invalid(
                "CARTBUS_QUEUE_URL",
                "expected `embedded`, `embedded:<path to queue file>`, `amqp://…` or `amqps://…` (value not shown: it may contain a password)",
            ));
        };
        let cart_address = match (self.cart_address.as_deref().map(str::trim), &queue) {
            (Some(address), _) if !address.is_empty() => address.to_string(),
            // RabbitMQ 3.x's AMQP 1.0 plugin declares `/queue/NAME` on attach.
            (_, QueueConfig::Amqp(_)) => "/queue/checkout-carts".to_string(),
            (_, QueueConfig::Embedded { .. }) => "checkout-carts".to_string(),
        };

        let instance = match self.instance.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "cartbus".into()),
        };
        if instance.len() > 200 {
            return Err(invalid("CARTBUS_INSTANCE", "at most 200 bytes"));
        }
        let version = non_empty("CARTBUS_VERSION", &self.version)?.to_string();
        if version.len() > 100 {
            return Err(invalid("CARTBUS_VERSION", "at most 100 bytes"));
        }

        let admin_token = secret("CARTBUS_ADMIN_TOKEN", self.admin_token)?;
        let storefront_key = secret("CARTBUS_STOREFRONT_KEY", self.storefront_key)?;

        let consumer_enabled = match self.consumer.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            other => {
                return Err(invalid(
                    "CARTBUS_CONSUMER",
                    format!("expected on or off, got {other:?}"),
                ));
            }
        };
        let consumer_batch =
            in_range("CARTBUS_CONSUMER_BATCH", self.consumer_batch, 1, 10_000)? as usize;
        let consumers = in_range("CARTBUS_CONSUMERS", self.consumers, 1, 64)? as usize;
        let max_attempts = in_range("CARTBUS_MAX_ATTEMPTS", self.max_attempts, 1, 1000)?;
        let resubmit_limit = in_range("CARTBUS_RESUBMIT_LIMIT", self.resubmit_limit, 1, 100)?;
        let lease = seconds("CARTBUS_LEASE_SECONDS", self.lease_seconds, 1, 3600)?;
        // Capped at 2 s: a checkout must answer (queued or direct) within about that long
        // even when the queue hangs.
        let send_timeout = Duration::from_millis(in_range(
            "CARTBUS_SEND_TIMEOUT_MS",
            self.send_timeout_ms,
            10,
            2_000,
        )?);
        let max_in_flight =
            in_range("CARTBUS_MAX_IN_FLIGHT", self.max_in_flight, 1, 1_000_000)? as usize;
        let retry_after = seconds(
            "CARTBUS_RETRY_AFTER_SECONDS",
            self.retry_after_seconds,
            1,
            3600,
        )?;
        let request_timeout = seconds(
            "CARTBUS_REQUEST_TIMEOUT_SECONDS",
            self.request_timeout_seconds,
            1,
            600,
        )?;
        let shutdown_delay = seconds(
            "CARTBUS_SHUTDOWN_DELAY_SECONDS",
            self.shutdown_delay_seconds,
            0,
            600,
        )?;
        let shutdown_timeout = seconds(
            "CARTBUS_SHUTDOWN_TIMEOUT_SECONDS",
            self.shutdown_timeout_seconds,
            1,
            3600,
        )?;

        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| invalid("CARTBUS_LOG", e.to_string()))?;
        let log_json = match self.log_format.trim() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "CARTBUS_LOG_FORMAT",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };

        let fulfilment = fulfilment::validate(RawFulfilment {
            routes: self.routes.as_deref(),
            audit_address: self.audit_address.as_deref(),
            audit_threshold: self.audit_threshold,
            status_address: self.status_address.as_deref(),
            relay_batch: self.relay_batch,
            relay_lease_seconds: self.relay_lease_seconds,
            relay_max_retries: self.relay_max_retries,
            relay_retry_base_ms: self.relay_retry_base_ms,
            relay_poll_ms: self.relay_poll_ms,
            relay_workers: self.relay_workers,
            partner_keys,
            address_prefix: match queue {
                QueueConfig::Amqp(_) => "/queue/",
                QueueConfig::Embedded { .. } => "",
            },
        })?;
        let payment_url = match self.payment_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(PaymentUrl::parse(raw)?),
        };
        let payment_timeout = Duration::from_millis(in_range(
            "CARTBUS_PAYMENT_TIMEOUT_MS",
            self.payment_timeout_ms,
            100,
            60_000,
        )?);
        // A direct write's payment call must end well inside its request, so that the
        // request (which waits for it at most half its timeout) sees the outcome.
        if payment_url.is_some() && payment_timeout >= request_timeout / 2 {
            return Err(invalid(
                "CARTBUS_PAYMENT_TIMEOUT_MS",
                format!(
                    "must be below half of CARTBUS_REQUEST_TIMEOUT_SECONDS ({} ms), got {} ms",
                    (request_timeout / 2).as_millis(),
                    payment_timeout.as_millis()
                ),
            ));
        }
        let payment_token = secret("CARTBUS_PAYMENT_TOKEN", self.payment_token)?;

        Ok(Config {
            listen,
            data_dir,
            database_url: SecretString::from(database_url),
            database_kind,
            database_max_connections,
            queue,
            cart_address,
            instance,
            version,
            admin_token,
            storefront_key,
            consumer_enabled,
            consumer_batch,
            consumers,
            max_attempts,
            resubmit_limit,
            lease,
            send_timeout,
            max_in_flight,
            retry_after,
            request_timeout,
            hostile,
            shutdown_delay,
            shutdown_timeout,
            log: self.log,
            log_json,
            fulfilment,
            payment_url,
            payment_timeout,
            payment_token,
        })
    }
}

impl Raw {
    fn hostile_limits(&self) -> Result<HostileLimits, ConfigError> {
        Ok(HostileLimits {
            max_connections: in_range(
                "CARTBUS_MAX_CONNECTIONS",
                self.max_connections,
                1,
                1_000_000,
            )? as usize,
            header_read_timeout: seconds(
                "CARTBUS_HEADER_READ_TIMEOUT_SECONDS",
                self.header_read_timeout_seconds,
                1,
                600,
            )?,
            body_read_timeout: seconds(
                "CARTBUS_BODY_READ_TIMEOUT_SECONDS",
                self.body_read_timeout_seconds,
                1,
                600,
            )?,
            // Below 1 KiB a browser's ordinary head no longer fits; above 256 KiB hyper's
            // read buffer (~400 KiB) would be reached first.
            max_header_bytes: in_range(
                "CARTBUS_MAX_HEADER_BYTES",
                self.max_header_bytes,
                1024,
                256 * 1024,
            )? as usize,
            max_headers: in_range("CARTBUS_MAX_HEADERS", self.max_headers, 8, 1000)? as usize,
            admin_failures_per_client: in_range(
                "CARTBUS_ADMIN_AUTH_FAILURES",
                self.admin_auth_failures,
                1,
                1_000_000,
            )?,
            admin_failures_global: in_range(
                "CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES",
                self.admin_auth_global_failures,
                1,
                1_000_000,
            )?,
            admin_failure_window: seconds(
                "CARTBUS_ADMIN_AUTH_WINDOW_SECONDS",
                self.admin_auth_window_seconds,
                1,
                86_400,
            )?,
        })
    }
}

fn non_empty<'a>(setting: &'static str, value: &'a str) -> Result<&'a str, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        Err(invalid(setting, "must not be empty"))
    } else {
        Ok(value)
    }
}

pub(crate) fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    setting: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        Err(invalid(
            setting,
            format!("{value} is out of range {min}..={max}"),
        ))
    } else {
        Ok(value)
    }
}

fn seconds(setting: &'static str, value: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    in_range(setting, value, min, max).map(Duration::from_secs)
}

fn secret(
    setting: &'static str,
    value: Option<String>,
) -> Result<Option<SecretString>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.trim() != v => Err(invalid(
            setting,
            "has leading or trailing whitespace (value not shown)",
        )),
        Some(v) if v.len() < 16 => Err(invalid(
            setting,
            "must be at least 16 characters (value not shown)",
        )),
        Some(v) => Ok(Some(SecretString::from(v))),
    }
}

/// The environment carries only strings, but figment guesses types (`CARTBUS_VERSION=2` is
/// a number to it). Settings that are strings accept any scalar.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(LenientString)
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(LenientString).map(Some)
}

struct LenientString;

impl serde::de::Visitor<'_> for LenientString {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_work_on_one_machine() {
        let config = Config::from_vars([]).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_kind, DatabaseKind::Sqlite);
        assert_eq!(
            config.database_url.expose_secret(),
            "sqlite://./data/cartbus.db"
        );
        assert!(
            matches!(config.queue, QueueConfig::Embedded { ref path } if path == Path::new("./data/queue.db"))
        );
        assert!(config.consumer_enabled);
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn a_numeric_looking_version_is_a_string() {
        let config = Config::from_vars([("CARTBUS_VERSION", "2")]).expect("valid");
        assert_eq!(config.version, "2");
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (key, value) in [
            ("CARTBUS_LISTEN", "nowhere"),
            ("CARTBUS_CONSUMER", "maybe"),
            ("CARTBUS_CONSUMER_BATCH", "0"),
            ("CARTBUS_CONSUMER_BATCH", "many"),
            ("DATABASE_URL", "mysql://x"),
            ("CARTBUS_QUEUE_URL", "kafka://x"),
            ("CARTBUS_QUEUE_URL", "amqp://"),
            ("CARTBUS_AMQP_WINDOW", "0"),
            ("CARTBUS_QUEUE_URL", "amqp://:secret@broker"),
            ("CARTBUS_AMQP_CA_FILE", "/nonexistent/ca.pem"),
            ("CARTBUS_SEND_TIMEOUT_MS", "5000"),
            ("CARTBUS_ADMIN_TOKEN", "short"),
            ("CARTBUS_LOG_FORMAT", "xml"),
            ("CARTBUS_PAYMENT_URL", "ftp://pay.example/capture"),
            ("CARTBUS_PAYMENT_URL", "not a url"),
            ("CARTBUS_PAYMENT_TIMEOUT_MS", "50"),
            ("CARTBUS_PAYMENT_TIMEOUT_MS", "60001"),
            ("CARTBUS_MAX_CONNECTIONS", "0"),
            ("CARTBUS_HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("CARTBUS_BODY_READ_TIMEOUT_SECONDS", "601"),
            ("CARTBUS_MAX_HEADER_BYTES", "512"),
            ("CARTBUS_MAX_HEADERS", "2"),
            ("CARTBUS_ADMIN_AUTH_FAILURES", "0"),
            ("CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES", "0"),
            ("CARTBUS_ADMIN_AUTH_WINDOW_SECONDS", "0"),
        ] {
            let err = Config::from_vars([(key, value)])
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn a_payment_timeout_must_end_inside_half_the_request_timeout() {
        let with = |payment_ms: &str, request_s: &str| {
            Config::from_vars([
                ("CARTBUS_PAYMENT_URL", "https://pay.example/capture"),
                ("CARTBUS_PAYMENT_TIMEOUT_MS", payment_ms),
                ("CARTBUS_REQUEST_TIMEOUT_SECONDS", request_s),
            ])
        };
        assert!(with("4999", "10").is_ok());
        for (payment_ms, request_s) in [("5000", "10"), ("5000", "9"), ("60000", "30")] {
            let err = with(payment_ms, request_s)
                .expect_err("too long")
                .to_string();
            assert!(err.contains("CARTBUS_PAYMENT_TIMEOUT_MS"), "{err}");
        }
        // No payment endpoint: the timeout is unused, so not held against the request's.
        assert!(
            Config::from_vars([
                ("CARTBUS_PAYMENT_TIMEOUT_MS", "5000"),
                ("CARTBUS_REQUEST_TIMEOUT_SECONDS", "5")
            ])
            .is_ok()
        );
    }

    #[test]
    fn an_amqp_url_gives_endpoint_credentials_and_vhost() {
        let config = Config::from_vars([(
            "CARTBUS_QUEUE_URL",
            "amqps://RootManageSharedAccessKey:a%2Fb%2Bc%3D@shop.servicebus.windows.net/prod",
        )])
        .expect("valid");
        let QueueConfig::Amqp(amqp) = &config.queue else {
            panic!("not amqp")
        };
        assert!(amqp.tls);
        assert_eq!(amqp.port, 5671);
        assert_eq!(amqp.username.as_deref(), Some("RootManageSharedAccessKey"));
        assert_eq!(
            amqp.password.as_ref().map(|p| p.expose_secret()),
            Some("a/b+c=")
        );
        assert_eq!(amqp.vhost.as_deref(), Some("prod"));
        assert_eq!(config.cart_address, "/queue/checkout-carts");
        assert!(!format!("{config:?}").contains("a/b+c="));

        let config = Config::from_vars([("CARTBUS_QUEUE_URL", "amqp://guest:guest@127.0.0.1")])
            .expect("valid");
        let QueueConfig::Amqp(amqp) = &config.queue else {
            panic!("not amqp")
        };
        assert_eq!(
            (amqp.tls, amqp.port, amqp.vhost.as_deref()),
            (false, 5672, None)
        );
    }

    #[test]
    fn an_all_digit_partner_secret_keeps_its_leading_zeros() {
        let config = Config::from_vars([
            ("CARTBUS_ROUTES", "*=acme"),
            ("CARTBUS_PARTNER_ACME_SECRET", "0012345678901234567890"),
        ])
        .expect("valid");
        let acme = config.fulfilment.partner("acme").expect("acme");
        assert_eq!(
            acme.secret.as_ref().map(|s| s.expose_secret()),
            Some("0012345678901234567890")
        );
        assert_eq!(acme.address, "partner-acme");
        let err = Config::from_vars([("CARTBUS_PARTNER_ACME_KEY", "x")])
            .expect_err("unknown partner setting")
            .to_string();
        assert!(err.contains("CARTBUS_PARTNER_ACME_KEY"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::from_vars([
            ("CARTBUS_ADMIN_TOKEN", "super-secret-admin-token"),
            ("DATABASE_URL", "postgres://u:hunter2hunter2@db/x"),
        ])
        .expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("super-secret-admin-token"));
        assert!(!printed.contains("hunter2hunter2"));
        let err = Config::from_vars([("DATABASE_URL", "mysql://u:hunter2hunter2@db/x")])
            .expect_err("bad scheme")
            .to_string();
        assert!(!err.contains("hunter2hunter2"));
    }

    #[test]
    fn the_payment_endpoint_never_prints_its_key() {
        let config = Config::from_vars([
            (
                "CARTBUS_PAYMENT_URL",
                "https://pay.example:8443/capture?key=k3y-in-query",
            ),
            ("CARTBUS_PAYMENT_TOKEN", "payment-bearer-token-0123"),
        ])
        .expect("valid");
        let url = config.payment_url.as_ref().expect("configured");
        assert_eq!(url.to_string(), "https://pay.example:8443/capture");
        assert_eq!(url.as_url().query(), Some("key=k3y-in-query"));
        assert_eq!(config.payment_timeout, Duration::from_secs(5));
        let printed = format!("{config:?}");
        assert!(!printed.contains("k3y-in-query"));
        assert!(!printed.contains("payment-bearer-token-0123"));
        let err =
            Config::from_vars([("CARTBUS_PAYMENT_URL", "ftp://pay.example/?key=k3y-in-query")])
                .expect_err("bad scheme")
                .to_string();
        assert!(!err.contains("k3y-in-query"));
    }
}
