//! The bodies of the webhook admin calls, and what each is checked into.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::super::request::{Fields, Findings, Sent};
use crate::domain::FieldError;
use crate::domain::webhook::{self, EventFilter, MAX_DESCRIPTION};

/// Longest a rotated-out secret may keep signing: a week.
pub const MAX_OVERLAP_SECONDS: i64 = 7 * 86_400;
/// How long it does unless told: a day.
pub const DEFAULT_OVERLAP_SECONDS: i64 = 86_400;
/// Most event ids one replay names.
pub const MAX_REPLAY_IDS: usize = 1_000;

/// Body of `POST /v1/admin/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateRequest {
    /// Where events are POSTed: `https://…` (or `http://`), no user or password in it.
    /// An address inside the network (loopback, private, link-local) is refused unless
    /// `CARTBUS_WEBHOOK_ALLOW_NETWORKS` lets it through.
    #[serde(default)]
    #[schema(value_type = String, required, example = "https://shop.example/hooks/cartbus")]
    url: Sent<String>,
    /// What it is for, up to 500 characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "storefront order emails")]
    description: Sent<String>,
    /// The event types it gets; left out = every type.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["checkout.ordered", "checkout.rejected"]))]
    event_types: Sent<Vec<String>>,
}

/// A new endpoint, checked.
pub struct Create {
    pub url: url::Url,
    pub description: String,
    pub events: EventFilter,
}

fn event_types(sent: Sent<Vec<String>>, found: &mut Findings) -> Option<EventFilter> {
    match sent {
        Sent::Absent => None,
        Sent::Typed(names) => EventFilter::parse(names.iter().map(String::as_str))
            .map_err(|e| found.add("/event_types", e))
            .ok(),
        Sent::WrongType => {
            found.add("/event_types", "must be an array of event type names");
            None
        }
    }
}

impl TryFrom<Fields<CreateRequest>> for Create {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<CreateRequest>) -> Result<Create, Vec<FieldError>> {
        let CreateRequest {
            url,
            description,
            event_types: types,
        } = body.known;
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let url = url
            .required_text(
                "/url",
                webhook::MAX_URL,
                "is required: where to POST events",
                &mut found,
            )
            .and_then(|raw| {
                webhook::check_url(&raw)
                    .map_err(|e| found.add("/url", e))
                    .ok()
            });
        let description = description
            .optional_text("/description", MAX_DESCRIPTION, &mut found)
            .unwrap_or_default();
        let events = event_types(types, &mut found).unwrap_or(EventFilter::ALL);
        let checked = url.map(|url| Create {
            url,
            description: description.trim().to_string(),
            events,
        });
        found.finish(checked)
    }
}

/// Body of `PATCH /v1/admin/webhooks/{id}`: what to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateRequest {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Sent<String>,
    /// The event types it gets from now on.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["order.status_changed"]))]
    event_types: Sent<Vec<String>>,
}

/// A change, checked.
pub struct Update {
    pub description: Option<String>,
    pub events: Option<EventFilter>,
}

impl TryFrom<Fields<UpdateRequest>> for Update {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<UpdateRequest>) -> Result<Update, Vec<FieldError>> {
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let description = body
            .known
            .description
            .optional_text("/description", MAX_DESCRIPTION, &mut found)
            .map(|d| d.trim().to_string());
        let events = event_types(body.known.event_types, &mut found);
        found.finish(Some(Update {
            description,
            events,
        }))
    }
}

/// Body of `POST /v1/admin/webhooks/{id}/rotate-secret` (may be left out).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RotateRequest {
    /// How long the old secret keeps signing beside the new one, so the receiver can
    /// switch without refusing a call: 0 to 604800 s, default 86400.
    #[serde(default)]
    #[schema(value_type = Option<i64>, example = 3600)]
    old_secret_seconds: Sent<i64>,
}

impl TryFrom<Fields<RotateRequest>> for i64 {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<RotateRequest>) -> Result<i64, Vec<FieldError>> {
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let seconds = match body.known.old_secret_seconds {
            Sent::Absent => DEFAULT_OVERLAP_SECONDS,
            Sent::Typed(s) if (0..=MAX_OVERLAP_SECONDS).contains(&s) => s,
            _ => {
                found.add(
                    "/old_secret_seconds",
                    format!("must be an integer from 0 to {MAX_OVERLAP_SECONDS}"),
                );
                0
            }
        };
        found.finish(Some(seconds))
    }
}

/// Body of `POST /v1/admin/webhooks/{id}/replay`: event ids, or a time range.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReplayRequest {
    /// Up to 1000 event ids (`evt_…`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["evt_4f1c2b7e9a3d5c6b8e0f1a2b3c4d5e6f"]))]
    event_ids: Sent<Vec<String>>,
    /// Events recorded at or after this time (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "2026-12-07T01:00:00Z")]
    since: Sent<String>,
    /// …and before this one; default now.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "2026-12-07T02:00:00Z")]
    until: Sent<String>,
}

/// A replay, checked.
pub enum Replay {
    Ids(Vec<String>),
    Between(DateTime<Utc>, DateTime<Utc>),
}

fn time(sent: Sent<String>, pointer: &str, found: &mut Findings) -> Option<DateTime<Utc>> {
    match sent {
        Sent::Absent => None,
        Sent::Typed(raw) => DateTime::parse_from_rfc3339(&raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| {
                found.add(
                    pointer,
                    "must be an RFC 3339 time, e.g. 2026-12-07T01:00:00Z",
                )
            })
            .ok(),
        Sent::WrongType => {
            found.add(pointer, "must be an RFC 3339 time");
            None
        }
    }
}

impl TryFrom<Fields<ReplayRequest>> for Replay {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<ReplayRequest>) -> Result<Replay, Vec<FieldError>> {
        let ReplayRequest {
            event_ids,
            since,
            until,
        } = body.known;
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let (since_given, until_given) = (
            !matches!(since, Sent::Absent),
            !matches!(until, Sent::Absent),
        );
        let since = time(since, "/since", &mut found);
        let until = time(until, "/until", &mut found);
        let checked = match event_ids {
            Sent::Typed(ids) if since_given || until_given => {
                let _ = ids;
                found.add(
                    "",
                    "give event_ids or a time range (since, until), not both",
                );
                None
            }
            Sent::Typed(ids) if ids.is_empty() || ids.len() > MAX_REPLAY_IDS => {
                found.add(
                    "/event_ids",
                    format!("must name 1 to {MAX_REPLAY_IDS} events"),
                );
                None
            }
            Sent::Typed(ids) => Some(Replay::Ids(ids)),
            Sent::WrongType => {
                found.add("/event_ids", "must be an array of event ids");
                None
            }
            Sent::Absent => match (since, since_given) {
                (Some(since), _) => {
                    let until = until.unwrap_or_else(Utc::now);
                    if until <= since {
                        found.add("/until", "must be after since");
                    }
                    Some(Replay::Between(since, until))
                }
                (None, false) => {
                    found.add("", "give event_ids, or since (and until) for a time range");
                    None
                }
                (None, true) => None,
            },
        };
        found.finish(checked)
    }
}
