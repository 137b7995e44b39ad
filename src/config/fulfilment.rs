//! Fulfilment settings (DESIGN §7): the routing table, partners' addresses and secrets,
//! the audit copy and the relay's pace. Partners are named by the configuration itself
//! (`CARTBUS_PARTNER_<NAME>_ADDRESS`, `…_SECRET`; `[fulfilment.partners.<name>]` in the
//! file), so they are read from whatever `fulfilment.partners` holds rather than from a
//! fixed list.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::value::Value;
use secrecy::SecretString;

use super::ConfigError;
use super::settings::{self as s, Setting};
use super::sources::{Values, scalar_text};
use crate::domain::partner::Site;

/// `country[:region]=partner` rules, first match wins; `*` is the default partner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// `None` for `*`.
    country: Option<String>,
    region: Option<String>,
    partner: String,
}

impl Routes {
    /// Parses `GB:LND=contoso,GB=contoso,*=fabrikam`.
    pub fn parse(raw: &str) -> Result<Routes, String> {
        let mut rules = Vec::new();
        for (n, entry) in raw.split(',').map(str::trim).enumerate() {
            let n = n + 1;
            if entry.is_empty() {
                return Err(format!("rule {n} is empty"));
            }
            let (place, partner) = entry
                .split_once('=')
                .ok_or_else(|| format!("rule {n} ({entry:?}) has no `=partner`"))?;
            let partner = partner_name(partner.trim())
                .map_err(|why| format!("rule {n} ({entry:?}): partner {why}"))?;
            let place = place.trim();
            let (country, region) = match place.split_once(':') {
                _ if place == "*" => (None, None),
                Some((country, region)) => (Some(country.trim()), Some(region.trim())),
                None => (Some(place), None),
            };
            let country = match country {
                None => None,
                Some(c) => {
                    let upper = c.to_ascii_uppercase();
                    if isocountry::CountryCode::for_alpha2(&upper).is_err() {
                        return Err(format!(
                            "rule {n} ({entry:?}): {c:?} is not an ISO 3166-1 alpha-2 country"
                        ));
                    }
                    Some(upper)
                }
            };
            let region = match region {
                Some("") => return Err(format!("rule {n} ({entry:?}): empty region")),
                Some(r) => Some(r.to_string()),
                None => None,
            };
            rules.push(Rule {
                country,
                region,
                partner,
            });
        }
        Ok(Routes { rules })
    }

    /// The partner for a shipping country and region, if any rule matches. Country and
    /// region compare without regard to case.
    pub fn partner_for(&self, country: &str, region: Option<&str>) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| {
                let country_ok = rule
                    .country
                    .as_deref()
                    .is_none_or(|c| c.eq_ignore_ascii_case(country));
                let region_ok = match (&rule.region, region) {
                    (None, _) => true,
                    (Some(want), Some(have)) => want.eq_ignore_ascii_case(have.trim()),
                    (Some(_), None) => false,
                };
                country_ok && region_ok
            })
            .map(|rule| rule.partner.as_str())
    }

    pub fn partners(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.partner.as_str())
    }
}

/// Partner names become parts of environment variable names: lowercase letters, digits
/// and `_`, at most 50.
fn partner_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 50 {
        return Err("name must be 1 to 50 characters".into());
    }
    if !lower
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "name {name:?} may hold only letters, digits and _ (it names CARTBUS_PARTNER_<NAME>_* settings)"
        ));
    }
    Ok(lower)
}

#[derive(Clone, Debug)]
pub struct Partner {
    pub address: String,
    /// Key of the HMAC-SHA256 that signs the partner's status replies.
    pub secret: Option<SecretString>,
}

#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Rows locked per batch.
    pub batch: usize,
    /// How long a batch's lock holds before another relay may take its rows.
    pub lease: Duration,
    /// Failed sends before a row becomes `critical_error`.
    pub max_retries: u32,
    /// First retry delay; doubled per failure, capped at five minutes.
    pub retry_base: Duration,
    /// How often an idle relay looks for new rows (new orders on this instance wake it
    /// at once).
    pub poll: Duration,
    /// Batches one instance works on at once: sends of one overlap the commits of another.
    pub workers: usize,
}

#[derive(Clone, Debug)]
pub struct FulfilmentSettings {
    /// `None`: the hand-off is off; outbox rows wait until routes are configured.
    pub routes: Option<Routes>,
    pub partners: BTreeMap<String, Partner>,
    pub audit_address: String,
    /// Totals above this (minor units of the order's currency) are copied to audit.
    pub audit_threshold: i64,
    /// Where partners reply.
    pub status_address: String,
    /// This site, when the shop runs in several datacenters (`CARTBUS_DATACENTER`).
    pub site: Option<Site>,
    pub relay: RelaySettings,
}

impl FulfilmentSettings {
    /// The hand-off runs (routes exist).
    pub fn enabled(&self) -> bool {
        self.routes.is_some()
    }

    /// Partner status replies are read when any partner can sign them.
    pub fn replies_enabled(&self) -> bool {
        self.partners.values().any(|p| p.secret.is_some())
    }

    pub fn partner(&self, name: &str) -> Option<&Partner> {
        self.partners.get(name)
    }

    /// This site's datacenter name, if several are configured.
    pub fn datacenter(&self) -> Option<&str> {
        self.site.as_ref().map(|site| site.datacenter.as_str())
    }
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Dynamic {
        setting: setting.into(),
        message: message.into(),
    }
}

/// `address_prefix`: queue addresses look like `/queue/NAME` on RabbitMQ 3.x, `NAME`
/// elsewhere; `broker`: the queue's public identifier, the default `reply_broker`.
pub(super) fn read(
    v: &Values,
    address_prefix: &str,
    broker: Option<String>,
) -> Result<FulfilmentSettings, ConfigError> {
    let routes = match v.given(&s::ROUTES)? {
        None => None,
        Some(text) => Some(Routes::parse(&text).map_err(|e| invalid(s::ROUTES.env, e))?),
    };
    let address = |setting: &Setting, default: &str| match v.given(setting)? {
        None => Ok(format!("{address_prefix}{default}")),
        Some(a) if a.len() > 500 => Err(invalid(setting.env, "at most 500 bytes")),
        Some(a) => Ok(a),
    };

    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    let mut secrets: BTreeMap<String, SecretString> = BTreeMap::new();
    for (name, kind, value) in partner_values(v) {
        let setting = match &kind {
            Some(kind) => format!("CARTBUS_PARTNER_{name}_{kind}"),
            None => format!("CARTBUS_PARTNER_{name}"),
        }
        .to_ascii_uppercase();
        let (Some(kind @ ("address" | "secret")), Some(value)) = (kind.as_deref(), value) else {
            return Err(invalid(
                setting,
                "unknown partner setting: expected CARTBUS_PARTNER_<NAME>_ADDRESS or CARTBUS_PARTNER_<NAME>_SECRET",
            ));
        };
        let name = partner_name(&name).map_err(|why| invalid(&setting, why))?;
        if kind == "address" {
            let value = value.trim();
            if value.len() > 500 {
                return Err(invalid(setting, "at most 500 bytes"));
            }
            if !value.is_empty() {
                addresses.insert(name, value.to_string());
            }
        } else {
            if value.trim() != value || value.len() < 16 {
                return Err(invalid(
                    setting,
                    "must be at least 16 characters with no surrounding whitespace (value not shown)",
                ));
            }
            secrets.insert(name, SecretString::from(value));
        }
    }
    let mut names: Vec<String> = addresses.keys().chain(secrets.keys()).cloned().collect();
    if let Some(routes) = &routes {
        names.extend(routes.partners().map(str::to_string));
    }
    names.sort();
    names.dedup();
    let partners = names
        .into_iter()
        .map(|name| {
            let partner = Partner {
                address: addresses
                    .remove(&name)
                    .unwrap_or_else(|| format!("{address_prefix}partner-{name}")),
                secret: secrets.remove(&name),
            };
            (name, partner)
        })
        .collect();

    let relay = RelaySettings {
        batch: v.number(&s::RELAY_BATCH)? as usize,
        lease: v.duration(&s::RELAY_LEASE)?,
        max_retries: v.number(&s::RELAY_MAX_RETRIES)? as u32,
        retry_base: v.duration(&s::RELAY_RETRY_BASE)?,
        poll: v.duration(&s::RELAY_POLL)?,
        workers: v.number(&s::RELAY_WORKERS)? as usize,
    };
    Ok(FulfilmentSettings {
        routes,
        partners,
        audit_address: address(&s::AUDIT_ADDRESS, "audit")?,
        audit_threshold: v.amount(&s::AUDIT_THRESHOLD)?,
        status_address: address(&s::STATUS_ADDRESS, "order-status")?,
        site: site(v, broker)?,
        relay,
    })
}

/// `CARTBUS_DATACENTER` and `CARTBUS_REPLY_BROKER`: both go to partners in every
/// new-order, so the name must be a plain word and the broker must carry no credentials.
fn site(v: &Values, broker: Option<String>) -> Result<Option<Site>, ConfigError> {
    let reply_broker = match v.given(&s::REPLY_BROKER)? {
        None => None,
        Some(given) => {
            Some(public_broker(given.trim()).map_err(|why| invalid(s::REPLY_BROKER.env, why))?)
        }
    };
    let Some(datacenter) = v.given(&s::DATACENTER)? else {
        if reply_broker.is_some() {
            return Err(invalid(
                s::REPLY_BROKER.env,
                "is sent only with a datacenter: set CARTBUS_DATACENTER too",
            ));
        }
        return Ok(None);
    };
    let datacenter = datacenter.trim().to_string();
    if datacenter.is_empty()
        || datacenter.len() > 32
        || !datacenter
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(
            s::DATACENTER.env,
            format!(
                "{datacenter:?} must be 1 to 32 lowercase letters, digits or `-` (it names the site to partners, in metrics and on the page)"
            ),
        ));
    }
    Ok(Some(Site {
        datacenter,
        reply_broker: reply_broker.or(broker),
    }))
}

/// A broker identifier fit to send to partners: up to 200 bytes, no `user:password@` and
/// no query (where a password could hide).
fn public_broker(given: &str) -> Result<String, String> {
    if given.is_empty() || given.len() > 200 {
        return Err("must be 1 to 200 bytes".into());
    }
    let authority = given.split_once("://").map_or(given, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    if authority.contains('@') || given.contains('?') {
        return Err(
            "must not carry credentials: it is sent to partners in every new-order (give scheme://host:port/vhost)"
                .into(),
        );
    }
    Ok(given.to_string())
}

/// Every `fulfilment.partners.<name>.<kind>` value as (name, kind, text); an entry that
/// is not a table of single values comes back without its kind or text, to be reported.
fn partner_values(v: &Values) -> Vec<(String, Option<String>, Option<String>)> {
    let Some(Value::Dict(_, partners)) = v.get("fulfilment.partners") else {
        return Vec::new();
    };
    let mut values = Vec::new();
    for (name, entry) in partners {
        match entry {
            Value::Dict(_, settings) => values.extend(
                settings
                    .iter()
                    .map(|(kind, value)| (name.clone(), Some(kind.clone()), scalar_text(value))),
            ),
            _ => values.push((name.clone(), None, None)),
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_and_star_is_the_default() {
        let routes = Routes::parse("GB:LND=contoso, gb=acme ,*=fabrikam").expect("valid");
        assert_eq!(routes.partner_for("GB", Some("LND")), Some("contoso"));
        assert_eq!(routes.partner_for("gb", Some("lnd")), Some("contoso"));
        assert_eq!(routes.partner_for("GB", Some("MAN")), Some("acme"));
        assert_eq!(routes.partner_for("GB", None), Some("acme"));
        assert_eq!(routes.partner_for("FR", Some("IDF")), Some("fabrikam"));
        let no_default = Routes::parse("GB=acme").expect("valid");
        assert_eq!(no_default.partner_for("FR", None), None);
    }

    #[test]
    fn bad_rules_say_which_and_why() {
        for (raw, says) in [
            ("GB", "rule 1"),
            ("GB=acme,", "rule 2 is empty"),
            ("XX=acme", "not an ISO 3166-1"),
            ("GB:=acme", "empty region"),
            ("GB=ac-me", "only letters"),
            ("GB=", "1 to 50"),
        ] {
            let err = Routes::parse(raw).expect_err(raw);
            assert!(err.contains(says), "{raw}: {err}");
        }
    }
}
