//! Extractors that turn every rejection into the app's problem+json error.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::request::Parts;
use http_body_util::LengthLimitError;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::ApiError;
use crate::runtime::app::AppState;

/// Largest request body accepted (DESIGN §3).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON request body, read up to [`MAX_BODY_BYTES`] into an untyped value. The handler
/// reads it as its request type (`request::Fields`), or a cart with the domain's parser,
/// after checking its path: either way every bad field is reported at once.
/// Nesting deeper than serde_json's recursion limit (128) is a 400, not a crash.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        // One deadline for the whole body, so a client trickling it in cannot hold the
        // request (and its in-flight slot) for long.
        let deadline = AppState::from_ref(state)
            .config
            .http
            .limits
            .body_read_timeout;
        let read = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES);
        let bytes = tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| ApiError::body_timeout(deadline))?
            .map_err(|e| {
                let too_large =
                    std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .any(|e| e.is::<LengthLimitError>());
                if too_large {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    ApiError::bad_request(format!("could not read the request body: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
    }
}

/// A query string read into `T`; one that cannot be read (`?limit=abc`) is a 400
/// problem like malformed JSON, not axum's plain-text rejection.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| Query(query))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// A JSON request body that may be left out altogether (`Content-Length: 0`, or no body
/// headers at all); when there is one, read as [`JsonBody`].
pub struct OptionalJsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers();
        let length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let no_body = length == Some(0)
            || (length.is_none()
                && !headers.contains_key(CONTENT_TYPE)
                && !headers.contains_key(TRANSFER_ENCODING));
        if no_body {
            return Ok(OptionalJsonBody(None));
        }
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        Ok(OptionalJsonBody(Some(value)))
    }
}

/// What a 415 says.
pub const JSON_CONTENT_TYPE_RULE: &str =
    "Content-Type must be application/json (charset, if given, utf-8)";

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = || ApiError::UnsupportedMediaType(JSON_CONTENT_TYPE_RULE.into());
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unsupported)?;
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
    if essence != "application/json"
        && !(essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Err(unsupported());
    }
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
            && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(unsupported());
        }
    }
    Ok(())
}

/// Requires `Authorization: Bearer <CARTBUS_STOREFRONT_KEY>` when a key is configured.
pub struct StorefrontAuth;

impl FromRequestParts<AppState> for StorefrontAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match &app.config.http.storefront_key {
            None => Ok(StorefrontAuth),
            Some(key)
                if bearer(&parts.headers)
                    .is_some_and(|t| secrets_match(t, key.expose_secret())) =>
            {
                Ok(StorefrontAuth)
            }
            Some(_) => Err(ApiError::Unauthorized),
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares in constant time; hashing first means the length does not leak either.
pub fn secrets_match(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.ct_eq(&expected).into()
}
