//! Fulfilment settings (DESIGN §7): the routing table, partners' addresses and secrets,
//! the audit copy and the relay's pace. Partners are named by the environment itself
//! (`CARTBUS_PARTNER_<NAME>_ADDRESS`, `…_SECRET`), so they are read from every key the
//! configuration holds rather than from a fixed list.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::{ConfigError, in_range};

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
}

/// The raw values, before validation; `partner_keys` are every `partner_*` key the
/// configuration holds (lowercased, without `CARTBUS_`) with its value.
pub struct RawFulfilment<'a> {
    pub routes: Option<&'a str>,
    pub audit_address: Option<&'a str>,
    pub audit_threshold: i64,
    pub status_address: Option<&'a str>,
    pub relay_batch: u32,
    pub relay_lease_seconds: u64,
    pub relay_max_retries: u32,
    pub relay_retry_base_ms: u64,
    pub relay_poll_ms: u64,
    pub relay_workers: u32,
    pub partner_keys: Vec<(String, String)>,
    /// Queue addresses look like `/queue/NAME` on RabbitMQ 3.x, `NAME` elsewhere.
    pub address_prefix: &'a str,
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Dynamic {
        setting: setting.into(),
        message: message.into(),
    }
}

pub fn validate(raw: RawFulfilment<'_>) -> Result<FulfilmentSettings, ConfigError> {
    let routes = match raw.routes.map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(Routes::parse(text).map_err(|e| invalid("CARTBUS_ROUTES", e))?),
    };
    let address = |setting: &str, value: Option<&str>, default: &str| match value.map(str::trim) {
        None | Some("") => Ok(format!("{}{default}", raw.address_prefix)),
        Some(a) if a.len() > 500 => Err(invalid(setting, "at most 500 bytes")),
        Some(a) => Ok(a.to_string()),
    };

    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    let mut secrets: BTreeMap<String, SecretString> = BTreeMap::new();
    for (key, value) in raw.partner_keys {
        let setting = format!("CARTBUS_{}", key.to_ascii_uppercase());
        let rest = &key["partner_".len()..];
        let (name, kind) = if let Some(name) = rest.strip_suffix("_address") {
            (name, "address")
        } else if let Some(name) = rest.strip_suffix("_secret") {
            (name, "secret")
        } else {
            return Err(invalid(
                setting,
                "unknown partner setting: expected CARTBUS_PARTNER_<NAME>_ADDRESS or CARTBUS_PARTNER_<NAME>_SECRET",
            ));
        };
        let name = partner_name(name).map_err(|why| invalid(&setting, why))?;
        if kind == "address" {
            if !value.trim().is_empty() {
                addresses.insert(name, address(&setting, Some(&value), "")?);
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
                    .unwrap_or_else(|| format!("{}partner-{name}", raw.address_prefix)),
                secret: secrets.remove(&name),
            };
            (name, partner)
        })
        .collect();

    if raw.audit_threshold < 0 {
        return Err(invalid(
            "CARTBUS_AUDIT_THRESHOLD",
            format!("{} must be ≥ 0 (minor units)", raw.audit_threshold),
        ));
    }
    let relay = RelaySettings {
        batch: in_range("CARTBUS_RELAY_BATCH", u64::from(raw.relay_batch), 1, 1_000)? as usize,
        lease: Duration::from_secs(in_range(
            "CARTBUS_RELAY_LEASE_SECONDS",
            raw.relay_lease_seconds,
            1,
            3_600,
        )?),
        max_retries: in_range(
            "CARTBUS_RELAY_MAX_RETRIES",
            u64::from(raw.relay_max_retries),
            0,
            1_000,
        )? as u32,
        retry_base: Duration::from_millis(in_range(
            "CARTBUS_RELAY_RETRY_BASE_MS",
            raw.relay_retry_base_ms,
            10,
            600_000,
        )?),
        poll: Duration::from_millis(in_range(
            "CARTBUS_RELAY_POLL_MS",
            raw.relay_poll_ms,
            10,
            60_000,
        )?),
        workers: in_range("CARTBUS_RELAY_WORKERS", raw.relay_workers, 1, 64)? as usize,
    };
    Ok(FulfilmentSettings {
        routes,
        partners,
        audit_address: address("CARTBUS_AUDIT_ADDRESS", raw.audit_address, "audit")?,
        audit_threshold: raw.audit_threshold,
        status_address: address("CARTBUS_STATUS_ADDRESS", raw.status_address, "order-status")?,
        relay,
    })
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
