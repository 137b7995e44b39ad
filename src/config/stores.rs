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

/// A broker from `CARTBUS_QUEUE_URL=amqp[s]://user:pass@host:port/vhost`: one node, or
/// several (a cluster), comma-separated.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// The nodes, in the order given; every connection tries them in turn from its own
    /// starting point and moves on to the next when its node is lost.
    pub nodes: Vec<AmqpNode>,
    pub connect_timeout: Duration,
    /// Most unsettled sends in flight at once, shared by all requests.
    pub window: usize,
    /// Most deliveries the consumer holds (received, not yet settled).
    pub prefetch: u32,
    /// PEM certificates trusted for `amqps://` besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The queue type `cartbus broker setup` declares; quorum queues are addressed as
    /// `/amq/queue/NAME` (a declaring `/queue/NAME` attach fails on them).
    pub queue_type: QueueType,
    /// RabbitMQ's management API, where configured.
    pub management: Option<ManagementConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// RabbitMQ's management HTTP API: one base URL per node, tried in turn.
#[derive(Clone, Debug)]
pub struct ManagementConfig {
    pub nodes: Vec<ManagementNode>,
}

#[derive(Clone, Debug)]
pub struct ManagementNode {
    /// `http://host:15672`, without credentials (safe to log).
    pub base: url::Url,
    pub username: String,
    pub password: SecretString,
}

/// One broker node: where it is and how to log in.
#[derive(Clone, Debug)]
pub struct AmqpNode {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// SASL PLAIN credentials (for Azure Service Bus: SAS key name and key).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// RabbitMQ virtual host, sent as the open frame's hostname `vhost:NAME`.
    pub vhost: Option<String>,
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
        let queue_type = match v.text(&s::AMQP_QUEUE_TYPE)?.as_deref().map(str::trim) {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(_) => return Err(invalid(&s::AMQP_QUEUE_TYPE, "expected classic or quorum")),
        };
        let management = match v.text(&s::BROKER_MANAGEMENT_URL)? {
            Some(raw) if !raw.trim().is_empty() => Some(parse_management(&raw)?),
            _ => None,
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
            // One node, or a cluster's nodes comma-separated.
            QueueConfig::Amqp(AmqpConfig {
                queue_type,
                management,
                ..parse_amqp_nodes(url, limits)?
            })
        } else {
            return Err(invalid(
                &s::QUEUE_URL,
                "expected `embedded`, `embedded:<path to queue file>`, `amqp://…` or `amqps://…` (value not shown: it may contain a password)",
            ));
        };
        let cart_address = match (v.given(&s::CART_ADDRESS)?, &backend) {
            (Some(address), _) => address,
            // RabbitMQ 3.x's AMQP 1.0 plugin declares `/queue/NAME` on attach.
            (None, _) => format!("{}checkout-carts", address_prefix(&backend)),
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
    pub fn address_prefix(&self) -> &'static str {
        address_prefix(&self.backend)
    }

    /// The broker as partners may be told of it: the first node's
    /// `scheme://host:port/vhost`, no credentials; `None` for the embedded queue.
    pub(super) fn public_broker(&self) -> Option<String> {
        match &self.backend {
            QueueConfig::Amqp(broker) => broker.nodes.first().map(AmqpNode::public_id),
            QueueConfig::Embedded { .. } => None,
        }
    }
}

/// RabbitMQ 3.x's AMQP 1.0 plugin: `/queue/NAME` declares a classic queue on attach,
/// `/amq/queue/NAME` declares nothing (quorum queues, declared by `cartbus broker setup`).
fn address_prefix(backend: &QueueConfig) -> &'static str {
    match backend {
        QueueConfig::Amqp(AmqpConfig {
            queue_type: QueueType::Quorum,
            ..
        }) => "/amq/queue/",
        QueueConfig::Amqp(_) => "/queue/",
        QueueConfig::Embedded { .. } => "",
    }
}

/// `http://user:pass@host:15672` and, after it, more nodes as full URLs or `host:port`
/// (with the first's scheme and credentials).
fn parse_management(raw: &str) -> Result<ManagementConfig, ConfigError> {
    let setting = &s::BROKER_MANAGEMENT_URL;
    let mut nodes: Vec<ManagementNode> = Vec::new();
    for (i, part) in raw.split(',').map(str::trim).enumerate() {
        let node = i + 1;
        let text = match nodes.first() {
            Some(first) if !part.contains("://") => format!("{}://{part}", first.base.scheme()),
            _ => part.to_string(),
        };
        let mut url = url::Url::parse(&text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                invalid(
                    setting,
                    format!("node {node} is not an http(s) URL or host:port (value not shown: it may contain a password)"),
                )
            })?;
        let (username, password) = match (url.username(), url.password(), nodes.first()) {
            ("", None, Some(first)) => (first.username.clone(), first.password.clone()),
            ("", _, _) | (_, None, _) => {
                return Err(invalid(
                    setting,
                    format!("node {node} needs user:password@ (value not shown)"),
                ));
            }
            (user, Some(password), _) => (
                percent_decode(user),
                SecretString::from(percent_decode(password)),
            ),
        };
        // Only the address stays in the URL: it is logged; the credentials are not.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        nodes.push(ManagementNode {
            base: url,
            username,
            password,
        });
    }
    Ok(ManagementConfig { nodes })
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
    /// Every node's `scheme://host:port`, for logs (never the credentials).
    pub fn endpoints(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(AmqpNode::endpoint).collect();
        all.join(", ")
    }
}

impl AmqpNode {
    /// `scheme://host:port`, for logs, metrics and the admin API (never the credentials).
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "amqps" } else { "amqp" },
            self.host,
            self.port
        )
    }

    /// `scheme://host:port/vhost` (vhost percent-encoded, omitted when default): which
    /// broker this is, safe to hand to partners (never the credentials).
    pub fn public_id(&self) -> String {
        match &self.vhost {
            Some(vhost) => format!(
                "{}/{}",
                self.endpoint(),
                percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => self.endpoint(),
        }
    }
}

struct BrokerLimits {
    connect_timeout: Duration,
    window: usize,
    prefetch: u32,
    ca_file: Option<PathBuf>,
}

/// `amqp://u:p@a:5672/vh,amqp://u:p@b:5672/vh`, or after the first URL just `b:5672`: a
/// bare `host[:port]` takes the first node's scheme, credentials and virtual host.
fn parse_amqp_nodes(raw: &str, limits: BrokerLimits) -> Result<AmqpConfig, ConfigError> {
    let mut nodes: Vec<AmqpNode> = Vec::new();
    for (i, part) in raw.split(',').map(str::trim).enumerate() {
        let node = match nodes.first() {
            Some(first) if !part.contains("://") => bare_node(part, first, i)?,
            _ if part.starts_with("amqp://") || part.starts_with("amqps://") => {
                parse_amqp_url(part, i)?
            }
            _ => {
                return Err(invalid(
                    &s::QUEUE_URL,
                    format!(
                        "node {} is neither an amqp:// or amqps:// URL nor host:port (value not shown: it may contain a password)",
                        i + 1
                    ),
                ));
            }
        };
        if nodes
            .iter()
            .any(|n| (n.host.as_str(), n.port) == (node.host.as_str(), node.port))
        {
            return Err(invalid(
                &s::QUEUE_URL,
                format!("names {} twice", node.endpoint()),
            ));
        }
        nodes.push(node);
    }
    Ok(AmqpConfig {
        nodes,
        connect_timeout: limits.connect_timeout,
        window: limits.window,
        prefetch: limits.prefetch,
        ca_file: limits.ca_file,
        queue_type: QueueType::Classic,
        management: None,
    })
}

/// A node given as `host[:port]`, like `first` in everything else.
fn bare_node(part: &str, first: &AmqpNode, i: usize) -> Result<AmqpNode, ConfigError> {
    let scheme = if first.tls { "amqps" } else { "amqp" };
    let parsed = url::Url::parse(&format!("{scheme}://{part}"))
        .ok()
        .filter(|u| u.path() == "/" || u.path().is_empty())
        .and_then(|u| Some((u.host_str()?.to_string(), u.port())))
        .filter(|(host, _)| !host.is_empty());
    let Some((host, port)) = parsed else {
        return Err(invalid(
            &s::QUEUE_URL,
            format!("node {} is not host:port", i + 1),
        ));
    };
    Ok(AmqpNode {
        host,
        port: port.unwrap_or(first.port),
        ..first.clone()
    })
}

fn parse_amqp_url(raw: &str, i: usize) -> Result<AmqpNode, ConfigError> {
    let setting = &s::QUEUE_URL;
    let node = i + 1;
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            setting,
            format!("node {node} is not a URL ({e}); value not shown: it may contain a password"),
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
        .ok_or_else(|| invalid(setting, format!("node {node} has no host")))?
        .to_string();
    let username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url
        .password()
        .map(|p| SecretString::from(percent_decode(p)));
    if username.is_none() && password.is_some() {
        // It would silently log in anonymously (RabbitMQ 3.x then maps that to guest).
        return Err(invalid(
            setting,
            format!("node {node} has a password but no user name (value not shown)"),
        ));
    }
    let vhost = match url.path() {
        "" | "/" => None,
        path => Some(percent_decode(&path[1..])),
    };
    Ok(AmqpNode {
        tls,
        port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
        host,
        username,
        password,
        vhost,
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
