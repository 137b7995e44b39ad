//! The bodies of the dead-letter calls, and what each is checked into.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::super::request::{Fields, Findings, Sent};
use super::time;
use crate::domain::{Cart, FieldError};
use crate::service::resubmit_jobs::JobFilter;

const MAX_REASON: usize = 500;
const MAX_FILTER: usize = 500;
const MAX_DRY_RUN: i64 = 10_000;
const DEFAULT_DRY_RUN: i64 = 1000;

/// Body of `DELETE /v1/admin/dead-letters/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeleteRequest {
    /// Why it can go (kept in the audit trail), 1–500 characters.
    #[serde(default)]
    #[schema(value_type = String, required, example = "test order from the storefront team")]
    reason: Sent<String>,
}

/// A deletion, checked.
#[derive(Debug)]
pub struct Delete {
    /// Trimmed, never blank.
    pub reason: String,
}

impl TryFrom<Fields<DeleteRequest>> for Delete {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<DeleteRequest>) -> Result<Delete, Vec<FieldError>> {
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let reason = body.known.reason.required_text(
            "/reason",
            MAX_REASON,
            "is required: say why it can go",
            &mut found,
        );
        found.finish(reason.map(|reason| Delete { reason }))
    }
}

/// Body of `POST /v1/admin/dead-letters/{id}/resubmit`, all optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResubmitRequest {
    /// Why (kept in the audit trail), at most 500 characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "schema 2 reader deployed")]
    reason: Sent<String>,
    /// A corrected cart (the shape of `POST /v1/checkouts`) to process instead of the
    /// message's own. Carts only: a partner reply is signed and cannot be corrected. A new
    /// `cart_id` makes it a new checkout; the same one is held to the same idempotency.
    // Any JSON here: the cart parser names every bad field of it, as at intake.
    #[schema(value_type = Option<Object>)]
    cart: Option<Value>,
}

/// A resubmit, checked.
#[derive(Debug)]
pub struct Resubmit {
    pub reason: Option<String>,
    pub corrected: Option<Cart>,
}

impl TryFrom<Fields<ResubmitRequest>> for Resubmit {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<ResubmitRequest>) -> Result<Resubmit, Vec<FieldError>> {
        let ResubmitRequest { reason, cart } = body.known;
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let reason = reason.optional_text("/reason", MAX_REASON, &mut found);
        let corrected = cart.and_then(|cart| {
            Cart::parse(&cart)
                .map_err(|errors| found.extend_at("/cart", errors))
                .ok()
        });
        found.finish(Some(Resubmit { reason, corrected }))
    }
}

/// Body of `POST /v1/admin/dead-letters/resubmit`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkRequest {
    /// Names the job: post the same id again to resume it after a crash (or to see it).
    /// Chosen by the server when left out.
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    job_id: Sent<Uuid>,
    /// Which open dead letters: at least one of `reason`, `source`, `since`.
    #[serde(default)]
    #[schema(value_type = JobFilter, required)]
    filter: Sent<Fields<FilterRequest>>,
    /// Why (kept in the audit trail of every dead letter), 1–500 characters. Not needed
    /// for a dry run.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "database constraint fixed in 1.4.2")]
    reason: Sent<String>,
    /// `true`: dry-run each match (at most `max`) and count the outcomes; nothing changes.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    dry_run: Sent<bool>,
    /// Dry run only: most dead letters to look at (1–10000, default 1000).
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    max: Sent<i64>,
}

/// The `filter` of a bulk resubmit as sent; documented as the [`JobFilter`] it becomes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FilterRequest {
    reason: Sent<String>,
    source: Sent<String>,
    since: Sent<String>,
}

/// A bulk resubmit, checked.
#[derive(Debug)]
pub struct BulkResubmit {
    pub job_id: Uuid,
    pub filter: JobFilter,
    /// Trimmed; `None` only for a dry run.
    pub reason: Option<String>,
    pub dry_run: bool,
    pub max: i64,
}

impl TryFrom<Fields<BulkRequest>> for BulkResubmit {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<BulkRequest>) -> Result<BulkResubmit, Vec<FieldError>> {
        let BulkRequest {
            job_id,
            filter,
            reason,
            dry_run,
            max,
        } = body.known;
        let mut found = Findings::default();
        found.unknown("", &body.unknown);
        let job_id = match job_id {
            Sent::Absent => Some(Uuid::now_v7()),
            Sent::Typed(id) => Some(id),
            Sent::WrongType => {
                found.add("/job_id", "must be a UUID");
                None
            }
        };
        let filter = job_filter(filter, &mut found);
        let dry_run = dry_run.flag("/dry_run", &mut found);
        let max = match max {
            Sent::Absent => DEFAULT_DRY_RUN,
            Sent::Typed(n) if (1..=MAX_DRY_RUN).contains(&n) => n,
            Sent::Typed(_) | Sent::WrongType => {
                found.add(
                    "/max",
                    format!("must be an integer from 1 to {MAX_DRY_RUN}"),
                );
                DEFAULT_DRY_RUN
            }
        };
        let reason = reason
            .optional_text("/reason", MAX_REASON, &mut found)
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if reason.is_none() && !dry_run && !found.about("/reason") {
            found.add("/reason", "is required: say why these can go again");
        }
        let checked = job_id.zip(filter).map(|(job_id, filter)| BulkResubmit {
            job_id,
            filter,
            reason,
            dry_run,
            max,
        });
        found.finish(checked)
    }
}

/// The filter of a bulk resubmit. A bad field of it is a finding, and so is a filter that
/// names nothing: a bulk resubmit of everything is too easy to start by mistake.
fn job_filter(sent: Sent<Fields<FilterRequest>>, found: &mut Findings) -> Option<JobFilter> {
    let Sent::Typed(filter) = sent else {
        found.add(
            "/filter",
            "is required: an object with at least one of reason, source, since",
        );
        return None;
    };
    let mut bad = Findings::default();
    bad.unknown("/filter", &filter.unknown);
    let FilterRequest {
        reason,
        source,
        since,
    } = filter.known;
    let reason = filter_text("reason", reason, &mut bad);
    let source = filter_text("source", source, &mut bad);
    let since = match since {
        Sent::Absent => None,
        Sent::Typed(s) => time(&s).unwrap_or_else(|detail| {
            bad.add("/filter/since", detail);
            None
        }),
        Sent::WrongType => {
            bad.add("/filter/since", "must be an RFC 3339 time");
            None
        }
    };
    let filter = JobFilter {
        reason,
        source,
        since,
    };
    if !bad.is_empty() {
        found.append(bad);
        return None;
    }
    if filter == JobFilter::default() {
        found.add(
            "/filter",
            "must name at least one of reason, source, since (a bulk resubmit of everything is too easy to start by mistake)",
        );
        return None;
    }
    Some(filter)
}

fn filter_text(name: &str, sent: Sent<String>, found: &mut Findings) -> Option<String> {
    match sent {
        Sent::Absent => None,
        Sent::Typed(s) if !s.is_empty() && s.chars().count() <= MAX_FILTER => Some(s),
        Sent::Typed(_) | Sent::WrongType => {
            found.add(
                format!("/filter/{name}"),
                format!("must be a string of 1 to {MAX_FILTER} characters"),
            );
            None
        }
    }
}
