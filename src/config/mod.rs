//! Every setting, its default and its validation.
//!
//! [`settings::SETTINGS`] describes each setting once: its environment variable, its key in
//! the `--config` TOML file, its default, its range and whether it is secret. Values come
//! from the defaults ← the optional file ← the environment (`sources`), and each section
//! reads its own through those rows, so a bad value stops start-up with a message naming
//! the environment variable that sets it. Secrets are wrapped in [`secrecy::SecretString`] from the
//! moment they are read, so they never print.
//!
//! The sections follow who reads them: the HTTP front door, the stop, and the admin API
//! (`http`); the orders database, the queue and the consumer between them (`stores`); the
//! hand-off to partners (`fulfilment`); payment capture (`payments`). The instance's name,
//! version, data directory and logging belong to the whole process.

pub mod fulfilment;
mod http;
mod payments;
pub mod settings;
mod sources;
mod stores;
#[cfg(test)]
mod tests;
mod webhooks;

use std::path::{Path, PathBuf};

use figment::Figment;

use fulfilment::FulfilmentSettings;
use settings::{DefaultValue, Kind, SETTINGS, Setting};
use sources::{Defaults, Environment, File, Values, invalid, scalar_text};

pub use http::{AdminSettings, AuthFailureLimits, HostileLimits, HttpSettings, ShutdownSettings};
pub use payments::{PaymentSettings, PaymentUrl};
pub use stores::{
    AmqpConfig, AmqpNode, ConsumerSettings, DatabaseKind, DatabaseSettings, ManagementConfig,
    ManagementNode, QueueConfig, QueueSettings, QueueType,
};
pub use webhooks::{ConfiguredEndpoint, WebhookSettings};

#[derive(Clone, Debug)]
pub struct Config {
    pub instance: String,
    pub version: String,
    /// Where the embedded defaults (SQLite orders database, queue file) live.
    pub data_dir: PathBuf,
    pub log: LogSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub database: DatabaseSettings,
    pub queue: QueueSettings,
    pub consumer: ConsumerSettings,
    pub admin: AdminSettings,
    /// The hand-off to transport partners and their replies (DESIGN §7).
    pub fulfilment: FulfilmentSettings,
    pub payments: PaymentSettings,
    pub webhooks: WebhookSettings,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    /// A `tracing` `EnvFilter`.
    pub filter: String,
    pub json: bool,
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

impl Config {
    /// Reads defaults ← `file` ← the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Loaded::load(file).map(|loaded| loaded.config)
    }

    /// Reads defaults ← the given variables only; for tests and tools that must not see
    /// the process environment.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Config, ConfigError> {
        Loaded::from_vars(vars).map(|loaded| loaded.config)
    }

    fn read(v: &Values) -> Result<Config, ConfigError> {
        let data_dir = v
            .given(&settings::DATA_DIR)?
            .ok_or_else(|| invalid(&settings::DATA_DIR, "must not be empty"))?;
        let data_dir = PathBuf::from(data_dir);
        let http = HttpSettings::read(v)?;
        let queue = QueueSettings::read(v, &data_dir)?;
        Ok(Config {
            instance: instance(v)?,
            version: version(v)?,
            log: LogSettings::read(v)?,
            shutdown: ShutdownSettings::read(v)?,
            database: DatabaseSettings::read(v, &data_dir)?,
            consumer: ConsumerSettings::read(v)?,
            admin: AdminSettings::read(v)?,
            fulfilment: fulfilment::read(v, queue.address_prefix(), queue.public_broker())?,
            payments: PaymentSettings::read(v, &http)?,
            webhooks: WebhookSettings::read(v)?,
            data_dir,
            http,
            queue,
        })
    }
}

fn instance(v: &Values) -> Result<String, ConfigError> {
    let instance = match v.given(&settings::INSTANCE)? {
        Some(name) => name,
        None => hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "cartbus".into()),
    };
    if instance.len() > 200 {
        return Err(invalid(&settings::INSTANCE, "at most 200 bytes"));
    }
    Ok(instance)
}

fn version(v: &Values) -> Result<String, ConfigError> {
    let Some(version) = v.text(&settings::VERSION)? else {
        return Ok(env!("CARGO_PKG_VERSION").into());
    };
    let version = version.trim();
    if version.is_empty() {
        return Err(invalid(&settings::VERSION, "must not be empty"));
    }
    if version.len() > 100 {
        return Err(invalid(&settings::VERSION, "at most 100 bytes"));
    }
    Ok(version.to_string())
}

impl LogSettings {
    fn read(v: &Values) -> Result<LogSettings, ConfigError> {
        let filter = v.text(&settings::LOG)?.unwrap_or_default();
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|e| invalid(&settings::LOG, e.to_string()))?;
        let json = match v.given(&settings::LOG_FORMAT)?.as_deref() {
            Some("text") => false,
            Some("json") => true,
            other => {
                return Err(invalid(
                    &settings::LOG_FORMAT,
                    format!("expected text or json, got {:?}", other.unwrap_or_default()),
                ));
            }
        };
        Ok(LogSettings { filter, json })
    }
}

/// A configuration together with where each of its values came from, for `cartbus
/// config`.
pub struct Loaded {
    pub config: Config,
    figment: Figment,
    values: Values,
}

/// One line of `cartbus config`.
#[derive(Debug)]
pub struct Shown {
    pub env: String,
    /// The effective value; a secret as `[redacted]`, a URL without its credentials.
    pub value: String,
    /// `default`, `environment` or `file <path>`.
    pub source: String,
    /// The key in the `--config` file.
    pub key: String,
}

impl Loaded {
    /// Reads defaults ← `file` ← the process environment, as `cartbus serve` does.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::from_sources(file, Environment::new(std::env::vars_os())?)
    }

    fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Loaded, ConfigError> {
        let vars = vars.into_iter().map(|(k, v)| (k.into(), v.into()));
        Self::from_sources(None, Environment::new(vars)?)
    }

    fn from_sources(file: Option<&Path>, environment: Environment) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::from(Defaults);
        if let Some(file) = file {
            figment = figment.merge(File::new(file));
        }
        let figment = figment.merge(environment);
        let values = Values::new(&figment)?;
        let config = Config::read(&values)?;
        Ok(Loaded {
            config,
            figment,
            values,
        })
    }

    /// Every setting in [`SETTINGS`] order, partners' once per partner.
    pub fn settings(&self) -> Vec<Shown> {
        let mut shown = Vec::new();
        for setting in SETTINGS {
            if !setting.per_partner() {
                let derived = match setting.default {
                    DefaultValue::Derived { effective, .. } => Some(effective(&self.config)),
                    _ => None,
                };
                shown.push(self.show(setting, setting.env.into(), setting.key, derived));
                continue;
            }
            for (name, partner) in &self.config.fulfilment.partners {
                let env = setting.env.replace("<NAME>", &name.to_ascii_uppercase());
                let key = setting.key.replace("<name>", &self.partner_key(name));
                let effective = match setting.secret() {
                    true => partner.secret.as_ref().map(|_| "[redacted]".to_string()),
                    false => Some(partner.address.clone()),
                };
                shown.push(self.show(setting, env, &key, effective));
            }
        }
        shown
    }

    /// `effective`: the value worked out at start-up, for a setting no source gives.
    fn show(&self, setting: &Setting, env: String, key: &str, effective: Option<String>) -> Shown {
        let given = self.values.get(key).and_then(scalar_text);
        let source = match given {
            Some(_) => self.source(key),
            None => sources::DEFAULTS.to_string(),
        };
        let value = match given.or(effective).filter(|v| !v.is_empty()) {
            None => "(unset)".to_string(),
            Some(_) if setting.secret() => "[redacted]".to_string(),
            Some(url) if setting.kind == Kind::Url => without_credentials(&url),
            Some(value) => value,
        };
        Shown {
            env,
            value,
            source,
            key: key.to_string(),
        }
    }

    fn source(&self, key: &str) -> String {
        match self.figment.find_metadata(key) {
            None => sources::DEFAULTS.to_string(),
            Some(metadata) => match metadata.source.as_ref().and_then(|s| s.file_path()) {
                Some(path) => format!("file {}", path.display()),
                None => metadata.name.to_string(),
            },
        }
    }

    /// The partner's key as its source spelled it (a file may say `ACME` for `acme`).
    fn partner_key(&self, name: &str) -> String {
        let partners = self.values.get("fulfilment.partners");
        partners
            .and_then(|partners| partners.as_dict())
            .and_then(|dict| dict.keys().find(|key| key.eq_ignore_ascii_case(name)))
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }
}

/// A URL as `cartbus config` shows it: user, password and query replaced by
/// `[redacted]`; the rest (scheme, host, port, path) is what an operator checks. A list
/// of URLs (a cluster's nodes) is shown node by node.
fn without_credentials(raw: &str) -> String {
    let nodes: Vec<String> = raw
        .split(',')
        .map(|node| one_without_credentials(node.trim()))
        .collect();
    nodes.join(",")
}

fn one_without_credentials(raw: &str) -> String {
    let Ok(url) = url::Url::parse(raw) else {
        // Not a URL (`embedded`, `host:port`): a credential in it would come before an `@`.
        return match raw.rsplit_once('@') {
            Some((_, rest)) => format!("[redacted]@{rest}"),
            None => raw.to_string(),
        };
    };
    let has_user = !url.username().is_empty() || url.password().is_some();
    if !has_user && url.query().is_none() {
        return raw.to_string();
    }
    let mut shown = format!("{}://", url.scheme());
    if has_user {
        shown.push_str("[redacted]@");
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?[redacted]");
    }
    shown
}
