//! Payment capture (DESIGN §8): where carts are captured before they become orders.

use std::time::Duration;

use secrecy::SecretString;

use super::ConfigError;
use super::http::HttpSettings;
use super::settings as s;
use super::sources::{Values, invalid};

#[derive(Clone, Debug)]
pub struct PaymentSettings {
    /// The endpoint carts are captured at; none = no payment step.
    pub url: Option<PaymentUrl>,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer` to the payment endpoint.
    pub token: Option<SecretString>,
    /// The sandbox capture endpoint smoke runs call; never the live one.
    pub smoke_url: Option<PaymentUrl>,
    /// Its token: the live one is never sent there.
    pub smoke_token: Option<SecretString>,
}

impl PaymentSettings {
    pub(super) fn read(v: &Values, http: &HttpSettings) -> Result<PaymentSettings, ConfigError> {
        let url = v
            .given(&s::PAYMENT_URL)?
            .map(|raw| PaymentUrl::parse(&s::PAYMENT_URL, raw))
            .transpose()?;
        let smoke_url = v
            .given(&s::PAYMENT_SMOKE_URL)?
            .map(|raw| PaymentUrl::parse(&s::PAYMENT_SMOKE_URL, raw))
            .transpose()?;
        let timeout = v.duration(&s::PAYMENT_TIMEOUT)?;
        // A direct write's payment call must end well inside its request, so that the
        // request (which waits for it at most half its timeout) sees the outcome.
        let half_request = http.request_timeout / 2;
        if url.is_some() && timeout >= half_request {
            return Err(invalid(
                &s::PAYMENT_TIMEOUT,
                format!(
                    "must be below half of CARTBUS_REQUEST_TIMEOUT_SECONDS ({} ms), got {} ms",
                    half_request.as_millis(),
                    timeout.as_millis()
                ),
            ));
        }
        Ok(PaymentSettings {
            url,
            timeout,
            token: v.secret(&s::PAYMENT_TOKEN)?,
            smoke_url,
            smoke_token: v.secret(&s::PAYMENT_SMOKE_TOKEN)?,
        })
    }
}

/// The payment endpoint. Its query string may carry a key, so it prints as scheme, host,
/// port and path only.
#[derive(Clone)]
pub struct PaymentUrl(url::Url);

impl PaymentUrl {
    fn parse(setting: &s::Setting, raw: String) -> Result<PaymentUrl, ConfigError> {
        let url = url::Url::parse(&raw).map_err(|e| {
            invalid(
                setting,
                format!("not a URL ({e}); value not shown: it may contain a key"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(setting, "must be an http:// or https:// URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(setting, "has no host"));
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
