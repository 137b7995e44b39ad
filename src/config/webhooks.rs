//! Webhooks (issue 20): the receiver from configuration and how every receiver is called.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::ConfigError;
use super::settings as s;
use super::sources::{Values, invalid};
use crate::domain::webhook::{self, EventFilter, Secret};

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `CARTBUS_WEBHOOK_URL`, with its secrets (newest first) and event types.
    pub configured: Option<ConfiguredEndpoint>,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub failing_after: u32,
    pub concurrency: usize,
    pub poll: Duration,
    pub allow_networks: Vec<ipnet::IpNet>,
}

/// The endpoint `CARTBUS_WEBHOOK_URL` names (id `config`).
#[derive(Clone, Debug)]
pub struct ConfiguredEndpoint {
    pub url: url::Url,
    pub secrets: Vec<Secret>,
    pub events: EventFilter,
}

impl WebhookSettings {
    pub(super) fn read(v: &Values) -> Result<WebhookSettings, ConfigError> {
        let secrets = match v.secret(&s::WEBHOOK_SECRET)? {
            None => Vec::new(),
            Some(list) => list
                .expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|one| !one.is_empty())
                .enumerate()
                .map(|(i, one)| {
                    Secret::parse(one)
                        .map_err(|e| invalid(&s::WEBHOOK_SECRET, format!("secret {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let url = v
            .given(&s::WEBHOOK_URL)?
            .map(|raw| {
                webhook::check_url(&raw).map_err(|e| {
                    invalid(
                        &s::WEBHOOK_URL,
                        format!("{e}; value not shown: it may contain a key"),
                    )
                })
            })
            .transpose()?;
        let events = match v.text(&s::WEBHOOK_EVENTS)? {
            None => EventFilter::ALL,
            Some(list) => {
                EventFilter::parse(list.split(',')).map_err(|e| invalid(&s::WEBHOOK_EVENTS, e))?
            }
        };
        let configured = match (url, secrets.is_empty()) {
            (Some(url), false) => Some(ConfiguredEndpoint {
                url,
                secrets,
                events,
            }),
            (Some(_), true) => {
                return Err(invalid(
                    &s::WEBHOOK_SECRET,
                    "must be set with CARTBUS_WEBHOOK_URL (`whsec_` + base64 of 24–64 bytes)",
                ));
            }
            (None, false) => {
                return Err(invalid(
                    &s::WEBHOOK_SECRET,
                    "is set without CARTBUS_WEBHOOK_URL",
                ));
            }
            (None, true) => None,
        };
        let allow_networks = match v.text(&s::WEBHOOK_ALLOW_NETWORKS)? {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            invalid(
                                &s::WEBHOOK_ALLOW_NETWORKS,
                                format!("`{n}` is not a network (comma-separated CIDRs)"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(WebhookSettings {
            configured,
            timeout: v.duration(&s::WEBHOOK_TIMEOUT)?,
            retry_base: v.duration(&s::WEBHOOK_RETRY_BASE)?,
            retry_cap: v.duration(&s::WEBHOOK_RETRY_CAP)?,
            failing_after: v.number(&s::WEBHOOK_FAILING_AFTER)? as u32,
            concurrency: v.number(&s::WEBHOOK_CONCURRENCY)? as usize,
            poll: v.duration(&s::WEBHOOK_POLL)?,
            allow_networks,
        })
    }
}
