//! Where values come from, each later one winning: the defaults in [`SETTINGS`], the
//! `--config` TOML file, the environment. Each is a figment provider, so that
//! `Figment::find_metadata` can tell `cartbus config` which one a value came from, and
//! [`Values`] reads the merged result through the setting that describes it, so that every
//! check names its variable.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Data, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::SecretString;

use super::ConfigError;
use super::settings::{DefaultValue, Kind, SETTINGS, Setting};

/// Metadata names, by which a value's source is told.
pub(super) const DEFAULTS: &str = "default";
pub(super) const ENVIRONMENT: &str = "environment";

/// Where partners' settings live: `fulfilment.partners.<name>.address`, `….secret`.
const PARTNERS: [&str; 2] = ["fulfilment", "partners"];

/// The built-in defaults, from [`SETTINGS`].
pub(super) struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULTS)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for setting in SETTINGS {
            let value = match setting.default {
                DefaultValue::Text(text) => Value::from(text),
                DefaultValue::Number(n) => Value::from(n),
                DefaultValue::Unset
                | DefaultValue::Derived { .. }
                | DefaultValue::PerPartner(_) => {
                    continue;
                }
            };
            insert(&mut dict, &path(setting.key), value, true);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// The variables that belong to the configuration, each at its setting's key.
///
/// Not figment's `Env`: it guesses a type from each value's text, so `0012…` would become
/// the number 12… (an all-digit secret loses its leading zeros) and `CARTBUS_VERSION=2` a
/// number; and the names do not follow the keys by a rule (`CARTBUS_MAX_ATTEMPTS` is
/// `consumer.max_attempts`, `DATABASE_URL` has no prefix). Here a value stays the text it
/// was, and the setting's [`Kind`] parses it.
pub(super) struct Environment(Dict);

impl Environment {
    pub(super) fn new(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Environment, ConfigError> {
        let mut dict = Dict::new();
        for (name, value) in vars {
            // A name that is not UTF-8 is none of ours.
            let Ok(name) = name.into_string() else {
                continue;
            };
            let Some(key) = env_key(&name) else {
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::Dynamic {
                setting: name.clone(),
                message: "is not valid UTF-8".into(),
            })?;
            insert(&mut dict, &key, Value::from(value), true);
        }
        Ok(Environment(dict))
    }
}

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENVIRONMENT)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// The key path of a variable, if it is a setting. Names compare without regard to case,
/// as figment's `Env` did.
fn env_key(name: &str) -> Option<Vec<String>> {
    if let Some(setting) = SETTINGS
        .iter()
        .find(|s| !s.per_partner() && s.env.eq_ignore_ascii_case(name))
    {
        return Some(path(setting.key));
    }
    let (prefix, rest) = name.split_at_checked("CARTBUS_PARTNER_".len())?;
    prefix
        .eq_ignore_ascii_case("CARTBUS_PARTNER_")
        .then(|| partner_key(&rest.to_ascii_lowercase()))
}

/// `acme_address` → `fulfilment.partners.acme.address`. Anything else lands at
/// `fulfilment.partners.<rest>`, where the fulfilment section reports it as an unknown
/// partner setting under its variable's name.
fn partner_key(rest: &str) -> Vec<String> {
    let mut key: Vec<String> = PARTNERS.iter().map(|s| s.to_string()).collect();
    match ["address", "secret"]
        .iter()
        .find_map(|kind| Some((rest.strip_suffix(kind)?.strip_suffix('_')?, *kind)))
    {
        Some((name, kind)) => key.extend([name.to_string(), kind.to_string()]),
        None => key.push(rest.to_string()),
    }
    key
}

/// The `--config` file. Its keys are the settings' dotted keys (`[consumer] batch = 256`);
/// the flat keys of earlier versions (`consumer_batch = 256`) are still read, and where
/// both are given the dotted one wins.
pub(super) struct File(Data<Toml>);

impl File {
    pub(super) fn new(path: &Path) -> File {
        File(Toml::file_exact(path))
    }
}

impl Provider for File {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            let flat: Vec<(String, Vec<String>)> = dict
                .iter()
                .filter(|(_, value)| !matches!(value, Value::Dict(..)))
                .filter_map(|(key, _)| Some((key.clone(), flat_key_path(key)?)))
                .collect();
            for (key, path) in flat {
                if let Some(value) = dict.remove(&key) {
                    insert(dict, &path, value, false);
                }
            }
        }
        Ok(data)
    }
}

/// Where a flat key of earlier versions now lives; `None` for a key that is already
/// where it belongs.
fn flat_key_path(key: &str) -> Option<Vec<String>> {
    if let Some(setting) = SETTINGS
        .iter()
        .find(|s| !s.per_partner() && s.flat_key() == key)
    {
        return (setting.key != key).then(|| path(setting.key));
    }
    key.strip_prefix("partner_").map(partner_key)
}

fn path(key: &str) -> Vec<String> {
    key.split('.').map(str::to_string).collect()
}

/// Puts `value` at `path`, making the tables on the way; an existing value stays unless
/// `replace`.
fn insert(dict: &mut Dict, path: &[String], value: Value, replace: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut dict = dict;
    for part in parents {
        let entry = dict
            .entry(part.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            if !replace {
                return;
            }
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, inner) = entry else {
            unreachable!("made a table just above");
        };
        dict = inner;
    }
    if replace || !dict.contains_key(last) {
        dict.insert(last.clone(), value);
    }
}

/// The merged values, read through the settings that describe them.
pub(super) struct Values(Value);

impl Values {
    pub(super) fn new(figment: &Figment) -> Result<Values, ConfigError> {
        let root: Dict = figment
            .extract()
            .map_err(|e| ConfigError::Source(e.to_string()))?;
        Ok(Values(Value::from(root)))
    }

    /// The value at a dotted key, if any source gave one.
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.0.find_ref(key)
    }

    /// The text of a setting as given (not trimmed); `None` when no source gives it.
    pub(super) fn text(&self, setting: &Setting) -> Result<Option<String>, ConfigError> {
        self.get(setting.key)
            .map(|value| {
                scalar_text(value).ok_or_else(|| {
                    invalid(setting, "expected a single value, got a table or a list")
                })
            })
            .transpose()
    }

    /// The trimmed text of a setting; `None` when it is not given or blank.
    pub(super) fn given(&self, setting: &Setting) -> Result<Option<String>, ConfigError> {
        Ok(self
            .text(setting)?
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty()))
    }

    /// A [`Kind::Count`], [`Kind::Seconds`] or [`Kind::Millis`] setting's number, in range.
    pub(super) fn number(&self, setting: &Setting) -> Result<u64, ConfigError> {
        let (Kind::Count { min, max } | Kind::Seconds { min, max } | Kind::Millis { min, max }) =
            setting.kind
        else {
            unreachable!(
                "{} is described as {:?}, not a number",
                setting.env, setting.kind
            );
        };
        let n = self.whole(setting)?;
        if n < i128::from(min) || n > i128::from(max) {
            return Err(invalid(
                setting,
                format!("{n} is out of range {min}..={max}"),
            ));
        }
        // In range, so it fits.
        Ok(n as u64)
    }

    pub(super) fn duration(&self, setting: &Setting) -> Result<Duration, ConfigError> {
        let n = self.number(setting)?;
        Ok(match setting.kind {
            Kind::Seconds { .. } => Duration::from_secs(n),
            Kind::Millis { .. } => Duration::from_millis(n),
            other => unreachable!("{} is described as {other:?}, not a duration", setting.env),
        })
    }

    /// A [`Kind::Amount`]: ≥ 0.
    pub(super) fn amount(&self, setting: &Setting) -> Result<i64, ConfigError> {
        let n = self.whole(setting)?;
        i64::try_from(n)
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| invalid(setting, format!("{n} must be ≥ 0 (minor units)")))
    }

    fn whole(&self, setting: &Setting) -> Result<i128, ConfigError> {
        let value = self.get(setting.key);
        let number = match value {
            Some(Value::String(_, s)) => s.trim().parse().ok(),
            Some(value) => whole_number(value),
            None => None,
        };
        number.ok_or_else(|| {
            let text = value.and_then(scalar_text).unwrap_or_default();
            invalid(setting, format!("expected a whole number, got {text:?}"))
        })
    }

    /// A [`Kind::Switch`].
    pub(super) fn switch(&self, setting: &Setting) -> Result<bool, ConfigError> {
        let text = self.text(setting)?.unwrap_or_default();
        match text.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            other => Err(invalid(
                setting,
                format!("expected on or off, got {other:?}"),
            )),
        }
    }

    /// A [`Kind::Secret`]; blank is unset.
    pub(super) fn secret(&self, setting: &Setting) -> Result<Option<SecretString>, ConfigError> {
        match self.text(setting)? {
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
}

/// A single value as text: the environment gives strings, a TOML file may give numbers
/// and booleans where a setting is text (`version = 2`).
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, n) => whole_number(value)
            .map(|n| n.to_string())
            .or_else(|| n.to_f64().map(|n| n.to_string())),
        Value::Empty(..) => Some(String::new()),
        Value::Dict(..) | Value::Array(..) => None,
    }
}

/// figment keeps signed and unsigned numbers apart.
fn whole_number(value: &Value) -> Option<i128> {
    value
        .to_i128()
        .or_else(|| value.to_u128().and_then(|n| i128::try_from(n).ok()))
}

pub(super) fn invalid(setting: &Setting, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.env,
        message: message.into(),
    }
}
