//! The sections of the HTTP side: the front door, the stop, and the admin API.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::ConfigError;
use super::settings as s;
use super::sources::{Values, invalid};

#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    /// `Retry-After` on a 503.
    pub retry_after: Duration,
    /// Checkouts handled at once; more are shed with 503.
    pub max_in_flight: usize,
    /// When set, `POST /v1/checkouts` needs it as a bearer token.
    pub storefront_key: Option<SecretString>,
    /// Limits that keep slow, oversized or guessing clients from exhausting the server.
    pub limits: HostileLimits,
}

/// What a client may hold before it is cut off (docs/operations.md#hostile-clients).
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
}

/// The stop spans the HTTP server and the background workers, so it is its own section.
#[derive(Clone, Debug)]
pub struct ShutdownSettings {
    /// Serving on with readiness false, for load balancers to notice.
    pub delay: Duration,
    /// Longest wait for in-flight requests, and then for the workers.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// None: the admin API is off.
    pub token: Option<SecretString>,
    /// Resubmits allowed per dead letter, so that a poison message cannot be replayed
    /// forever.
    pub resubmit_limit: u32,
    pub auth_failures: AuthFailureLimits,
    /// Proxies whose `X-Forwarded-For` names the client (`CARTBUS_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Wrong admin credentials allowed per client address, and from all clients, in one
/// window; past either, admin calls answer 429 until the window ends.
#[derive(Clone, Debug)]
pub struct AuthFailureLimits {
    pub per_client: u32,
    pub global: u32,
    pub window: Duration,
}

impl HttpSettings {
    pub(super) fn read(v: &Values) -> Result<HttpSettings, ConfigError> {
        let listen = v.text(&s::LISTEN)?.unwrap_or_default();
        let listen = listen.trim().parse::<SocketAddr>().map_err(|e| {
            invalid(
                &s::LISTEN,
                format!("{e}; expected host:port, e.g. 127.0.0.1:8080"),
            )
        })?;
        Ok(HttpSettings {
            listen,
            request_timeout: v.duration(&s::REQUEST_TIMEOUT)?,
            retry_after: v.duration(&s::RETRY_AFTER)?,
            max_in_flight: v.number(&s::MAX_IN_FLIGHT)? as usize,
            storefront_key: v.secret(&s::STOREFRONT_KEY)?,
            limits: HostileLimits {
                max_connections: v.number(&s::MAX_CONNECTIONS)? as usize,
                header_read_timeout: v.duration(&s::HEADER_READ_TIMEOUT)?,
                body_read_timeout: v.duration(&s::BODY_READ_TIMEOUT)?,
                max_header_bytes: v.number(&s::MAX_HEADER_BYTES)? as usize,
                max_headers: v.number(&s::MAX_HEADERS)? as usize,
            },
        })
    }
}

impl ShutdownSettings {
    pub(super) fn read(v: &Values) -> Result<ShutdownSettings, ConfigError> {
        Ok(ShutdownSettings {
            delay: v.duration(&s::SHUTDOWN_DELAY)?,
            timeout: v.duration(&s::SHUTDOWN_TIMEOUT)?,
        })
    }
}

impl AdminSettings {
    pub(super) fn read(v: &Values) -> Result<AdminSettings, ConfigError> {
        Ok(AdminSettings {
            token: v.secret(&s::ADMIN_TOKEN)?,
            resubmit_limit: v.number(&s::RESUBMIT_LIMIT)? as u32,
            auth_failures: AuthFailureLimits {
                per_client: v.number(&s::ADMIN_AUTH_FAILURES)? as u32,
                global: v.number(&s::ADMIN_AUTH_GLOBAL_FAILURES)? as u32,
                window: v.duration(&s::ADMIN_AUTH_WINDOW)?,
            },
            trusted_proxies: match v.text(&s::TRUSTED_PROXIES)? {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.parse().map_err(|_| {
                            invalid(
                                &s::TRUSTED_PROXIES,
                                format!("`{a}` is not an IP address (comma-separated IPs)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}
