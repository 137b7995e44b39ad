//! The sections of the two stores and what runs between them: the orders database, the
//! queue (embedded or a broker), and the consumer that turns queued carts into orders.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use super::ConfigError;
use super::settings as s;
use super::sources::{Values, invalid};

#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub kind: DatabaseKind,
    pub max_connections: u32,
}

/// Where orders live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// The embedded queue file or a broker.
    pub backend: QueueConfig,
    pub cart_address: String,
    /// Longest wait for the queue's confirmation before the order is written directly.
    pub send_timeout: Duration,
    /// Longest wait for the orders database's word on a reused `cart_id`; zero: none.
    pub conflict_check: Duration,
    /// How long an unsettled embedded-queue delivery stays invisible.
    pub lease: Duration,
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

#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub enabled: bool,
    /// Consumer tasks on this instance, each with its own receiver.
    pub tasks: usize,
    pub batch: usize,
    pub max_attempts: u32,
}

impl DatabaseSettings {
    pub(super) fn read(v: &Values, data_dir: &Path) -> Result<DatabaseSettings, ConfigError> {
        let url = match v.given(&s::DATABASE_URL)? {
            None => format!("sqlite://{}", data_dir.join("cartbus.db").display()),
            Some(url) => url,
        };
        let kind = if url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseKind::Postgres
        } else {
            // Never echo the URL: it may carry a password.
            return Err(invalid(
                &s::DATABASE_URL,
                "must start with sqlite: or postgres:// (value not shown: it may contain a password)",
            ));
        };
        Ok(DatabaseSettings {
            url: SecretString::from(url),
            kind,
            max_connections: v.number(&s::DATABASE_MAX_CONNECTIONS)? as u32,
        })
    }
}

impl QueueSettings {
    pub(super) fn read(v: &Values, data_dir: &Path) -> Result<QueueSettings, ConfigError> {
        // Broker settings are checked even when the embedded queue is in use, so a typo
        // shows up before the day the broker is switched on.
        let limits = BrokerLimits {
            connect_timeout: v.duration(&s::AMQP_CONNECT_TIMEOUT)?,
            window: v.number(&s::AMQP_WINDOW)? as usize,
            prefetch: v.number(&s::CONSUMER_PREFETCH)? as u32,
            ca_file: match v.given(&s::AMQP_CA_FILE)? {
                None => None,
                Some(path) => {
                    let path = PathBuf::from(path);
                    if !path.is_file() {
                        return Err(invalid(
                            &s::AMQP_CA_FILE,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                    Some(path)
                }
            },
        };
        let url = v.text(&s::QUEUE_URL)?.unwrap_or_default();
        let url = url.trim();
        let backend = if url == "embedded" {
            QueueConfig::Embedded {
                path: data_dir.join("queue.db"),
            }
        } else if let Some(path) = url.strip_prefix("embedded:") {
            let path = path.trim();
            if path.is_empty() {
                return Err(invalid(&s::QUEUE_URL, "must not be empty"));
            }
            QueueConfig::Embedded {
                path: PathBuf::from(path),
            }
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            QueueConfig::Amqp(parse_amqp_url(url, limits)?)
        } else {
            return Err(invalid(
                &s::QUEUE_URL,
                "expected `embedded`, `embedded:<path to queue file>`, `amqp://…` or `amqps://…` (value not shown: it may contain a password)",
            ));
        };
        let cart_address = match (v.given(&s::CART_ADDRESS)?, &backend) {
            (Some(address), _) => address,
            // RabbitMQ 3.x's AMQP 1.0 plugin declares `/queue/NAME` on attach.
            (None, QueueConfig::Amqp(_)) => "/queue/checkout-carts".to_string(),
            (None, QueueConfig::Embedded { .. }) => "checkout-carts".to_string(),
        };
        Ok(QueueSettings {
            backend,
            cart_address,
            send_timeout: v.duration(&s::SEND_TIMEOUT)?,
            conflict_check: v.duration(&s::CONFLICT_CHECK)?,
            lease: v.duration(&s::LEASE)?,
        })
    }

    /// Queue addresses look like `/queue/NAME` on RabbitMQ 3.x, `NAME` elsewhere.
    pub(super) fn address_prefix(&self) -> &'static str {
        match self.backend {
            QueueConfig::Amqp(_) => "/queue/",
            QueueConfig::Embedded { .. } => "",
        }
    }
}

impl ConsumerSettings {
    pub(super) fn read(v: &Values) -> Result<ConsumerSettings, ConfigError> {
        Ok(ConsumerSettings {
            enabled: v.switch(&s::CONSUMER)?,
            tasks: v.number(&s::CONSUMERS)? as usize,
            batch: v.number(&s::CONSUMER_BATCH)? as usize,
            max_attempts: v.number(&s::MAX_ATTEMPTS)? as u32,
        })
    }
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

struct BrokerLimits {
    connect_timeout: Duration,
    window: usize,
    prefetch: u32,
    ca_file: Option<PathBuf>,
}

fn parse_amqp_url(raw: &str, limits: BrokerLimits) -> Result<AmqpConfig, ConfigError> {
    let setting = &s::QUEUE_URL;
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            setting,
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
        .ok_or_else(|| invalid(setting, "has no host"))?
        .to_string();
    let username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url
        .password()
        .map(|p| SecretString::from(percent_decode(p)));
    if username.is_none() && password.is_some() {
        // It would silently log in anonymously (RabbitMQ 3.x then maps that to guest).
        return Err(invalid(
            setting,
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
        ca_file: limits.ca_file,
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
