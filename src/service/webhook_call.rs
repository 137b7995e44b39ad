//! One call to a webhook receiver (issue 20), Standard Webhooks style: the event as
//! `{"type", "timestamp", "data"}`, with `webhook-id` (the event's id), `webhook-timestamp`
//! and `webhook-signature` headers; a bounded time; no redirects; and never to an address
//! inside the shop's network unless allowed (server-side request forgery): every address a
//! name resolves to is checked when the connection is made, not only when the endpoint was
//! registered, so a name that later points inside is refused too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::WebhookSettings;
use crate::domain::webhook::{self, Secret};

/// The most of a receiver's answer that is read; the rest is dropped with its connection.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// A 2xx.
    Delivered(u16),
    /// 410 Gone: the receiver asks not to be called again.
    Gone,
    /// Another status.
    Refused(u16),
    /// No answer within the timeout.
    Timeout,
    /// No connection: refused, unreachable, an inside address, a bad name.
    Unreachable(String),
}

impl CallResult {
    /// The `cartbus_webhook_calls_total` outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallResult::Delivered(_) => "delivered",
            CallResult::Gone => "gone",
            CallResult::Refused(_) => "refused",
            CallResult::Timeout => "timeout",
            CallResult::Unreachable(_) => "unreachable",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallResult::Delivered(s) | CallResult::Refused(s) => Some(*s),
            CallResult::Gone => Some(410),
            _ => None,
        }
    }

    /// Why it was not delivered, for the delivery row (no URL: it may carry a key).
    pub fn error(&self, timeout: Duration) -> Option<String> {
        match self {
            CallResult::Delivered(_) => None,
            CallResult::Gone => Some("the receiver answered 410 Gone".into()),
            CallResult::Refused(status) => Some(format!("the receiver answered {status}")),
            CallResult::Timeout => Some(format!("no answer within {} ms", timeout.as_millis())),
            CallResult::Unreachable(why) => Some(why.clone()),
        }
    }
}

/// The event as sent: Standard Webhooks' `type`, `timestamp`, `data`.
pub fn body(kind: &str, created_at: DateTime<Utc>, data: &str) -> String {
    // `data` is the JSON this service wrote from a typed payload.
    format!(
        r#"{{"type":{},"timestamp":"{}","data":{data}}}"#,
        serde_json::Value::from(kind),
        created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// Resolves names for receivers, keeping only addresses outside the shop's network.
struct Guard {
    allowed: Vec<ipnet::IpNet>,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let outside: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| webhook::forbidden_address(a.ip(), &allowed).is_none())
                .collect();
            if outside.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| webhook::forbidden_address(a.ip(), &allowed))
                    .unwrap_or("no address");
                return Err(name_refused(&host, why).into());
            }
            Ok(Box::new(outside.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why `url` may not be called, when its host is an inside address (a literal, or a name
/// that resolves only inside). A name that does not resolve now is let through: it is
/// checked again at every call.
pub async fn refused_address(url: &url::Url, allowed: &[ipnet::IpNet]) -> Option<String> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        return literal_refused(url, allowed);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await.ok()?.collect();
    let why = found
        .iter()
        .map(|a| webhook::forbidden_address(a.ip(), allowed))
        .collect::<Option<Vec<_>>>()?;
    why.first().map(|why| name_refused(host, why))
}

/// Why `url` may not be called when its host is a literal inside address: such a host
/// never reaches the resolver, so it is checked by itself.
fn literal_refused(url: &url::Url, allowed: &[ipnet::IpNet]) -> Option<String> {
    let ip = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()?;
    webhook::forbidden_address(ip, allowed).map(|why| {
        format!("{ip} is a {why} address; refused (CARTBUS_WEBHOOK_ALLOW_NETWORKS lets a network through)")
    })
}

/// Why a name whose every address is inside may not be called.
fn name_refused(host: &str, why: &str) -> String {
    format!(
        "`{host}` resolves only to inside addresses ({why}); refused (CARTBUS_WEBHOOK_ALLOW_NETWORKS lets a network through)"
    )
}

/// Calls receivers.
#[derive(Clone)]
pub struct Caller {
    client: reqwest::Client,
    timeout: Duration,
    allowed: Arc<Vec<ipnet::IpNet>>,
    user_agent: String,
}

impl Caller {
    pub fn new(settings: &WebhookSettings, version: &str) -> Result<Caller, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Guard {
                allowed: settings.allow_networks.clone(),
            }))
            .build()?;
        Ok(Caller {
            client,
            timeout: settings.timeout,
            allowed: Arc::new(settings.allow_networks.clone()),
            user_agent: format!("cartbus/{version} (webhooks)"),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one event, signed with every one of `secrets`.
    pub async fn call(
        &self,
        url: &url::Url,
        secrets: &[Secret],
        event_id: &str,
        body: String,
    ) -> CallResult {
        if let Some(refused) = literal_refused(url, &self.allowed) {
            return CallResult::Unreachable(refused);
        }
        let timestamp = Utc::now().timestamp();
        let signature = webhook::signature_header(secrets, event_id, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("user-agent", &self.user_agent)
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(mut answer) => {
                let status = answer.status().as_u16();
                // Read (and drop) a short answer so the connection can be reused; a longer
                // one is cut off (the connection is dropped with it): a receiver cannot keep
                // a call busy by streaming.
                let mut read = 0;
                while let Ok(Some(chunk)) = answer.chunk().await {
                    read += chunk.len();
                    if read > MAX_ANSWER_BYTES {
                        break;
                    }
                }
                match status {
                    200..=299 => CallResult::Delivered(status),
                    410 => CallResult::Gone,
                    other => CallResult::Refused(other),
                }
            }
            Err(e) if e.is_timeout() => CallResult::Timeout,
            Err(e) => CallResult::Unreachable(
                crate::telemetry::error_chain(&e.without_url())
                    .chars()
                    .take(500)
                    .collect(),
            ),
        }
    }
}
