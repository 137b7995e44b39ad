//! The HTTP call to the payment capture endpoint (`CARTBUS_PAYMENT_URL`) and how its
//! answer is read: captured, declined, never sent, or unknown.

use std::time::Duration;

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::{Config, PaymentUrl};
use crate::domain::Cart;
use crate::domain::payment::CallOutcome;

/// Longest `payment_id` kept from a capture answer.
const MAX_PAYMENT_ID: usize = 200;

#[derive(Serialize)]
struct CaptureRequest<'a> {
    cart_id: String,
    /// Minor units.
    amount: i64,
    currency: &'a str,
    customer_id: Option<&'a str>,
}

/// A client of the payment endpoint.
pub struct Gateway {
    client: reqwest::Client,
    url: PaymentUrl,
    token: Option<SecretString>,
    timeout: Duration,
}

impl Gateway {
    /// `CARTBUS_PAYMENT_TIMEOUT_MS`: how long one capture call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The gateway `config` asks for; `None` when no payment endpoint is configured.
    pub fn from_config(config: &Config) -> Result<Option<Gateway>, reqwest::Error> {
        Gateway::at(
            config,
            config.payments.url.as_ref(),
            config.payments.token.as_ref(),
        )
    }

    /// The gateway of smoke runs: `CARTBUS_PAYMENT_SMOKE_URL` (the provider's sandbox)
    /// with `CARTBUS_PAYMENT_SMOKE_TOKEN` — never the live token — and the same timeout;
    /// `None` when it is not set.
    pub fn for_smoke(config: &Config) -> Result<Option<Gateway>, reqwest::Error> {
        let payments = &config.payments;
        Gateway::at(
            config,
            payments.smoke_url.as_ref(),
            payments.smoke_token.as_ref(),
        )
    }

    fn at(
        config: &Config,
        url: Option<&PaymentUrl>,
        token: Option<&SecretString>,
    ) -> Result<Option<Gateway>, reqwest::Error> {
        let Some(url) = url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(config.payments.timeout)
            // Shorter than the whole call, so that a connect that gives up is reported as
            // a connect error (never sent, retried) rather than as an unknown timeout.
            .connect_timeout(config.payments.timeout / 2)
            // A fresh connection per call: a pooled one that the server closed meanwhile
            // fails half-way, and that would count as "unknown".
            .pool_max_idle_per_host(0)
            // A redirected POST may be replayed as something else: treat it as unknown.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Gateway {
            client,
            url: url.clone(),
            token: token.cloned(),
            timeout: config.payments.timeout,
        }))
    }

    /// Where captures go, for logs (no query string).
    pub fn endpoint(&self) -> &PaymentUrl {
        &self.url
    }

    /// Captures the cart's total, idempotently on its cart_id (`Idempotency-Key`).
    pub async fn capture(&self, cart: &Cart) -> CallOutcome {
        let cart_id = cart.cart_id.to_string();
        let mut request = self
            .client
            .post(self.url.as_url().clone())
            .header("idempotency-key", &cart_id)
            .json(&CaptureRequest {
                cart_id: cart_id.clone(),
                amount: cart.total.minor_units(),
                currency: cart.currency.as_str(),
                customer_id: cart.customer.id.as_deref(),
            });
        if let Some(token) = &self.token
            && let Ok(mut value) =
                HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        {
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return self.failed(e),
        };
        let status = response.status();
        if status.is_success() {
            // The capture happened whatever the body says; a body lost now only costs the id.
            let payment_id = response.bytes().await.ok().and_then(|body| {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()?
                    .get("payment_id")?
                    .as_str()
                    .filter(|id| !id.is_empty() && id.len() <= MAX_PAYMENT_ID)
                    .map(str::to_string)
            });
            return CallOutcome::Captured { payment_id };
        }
        match status.as_u16() {
            402 | 422 => CallOutcome::Declined {
                detail: format!("the payment was declined (HTTP {})", status.as_u16()),
            },
            _ => CallOutcome::Unknown {
                detail: format!(
                    "the payment endpoint answered HTTP {}: it may or may not have captured",
                    status.as_u16()
                ),
            },
        }
    }

    fn failed(&self, e: reqwest::Error) -> CallOutcome {
        // Without the URL: its query string may hold a key.
        let connect = e.is_connect();
        let timeout = e.is_timeout();
        let detail = crate::telemetry::error_chain(&e.without_url());
        if connect {
            CallOutcome::NotSent {
                detail: format!("could not connect to the payment endpoint: {detail}"),
            }
        } else if timeout {
            CallOutcome::Unknown {
                detail: format!(
                    "no answer from the payment endpoint within {} ms: it may or may not have captured",
                    self.timeout.as_millis()
                ),
            }
        } else {
            CallOutcome::Unknown {
                detail: format!(
                    "the payment call failed after it was sent ({detail}): it may or may not have captured"
                ),
            }
        }
    }
}
