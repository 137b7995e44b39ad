//! The `outcome` values of each labelled counter. [`Metrics::new`] registers every one at
//! 0, so that a dashboard or an alert reads 0 rather than "no data" before the first
//! event, and the increment helpers check (in debug builds, so in every test) that what
//! they count is listed here: an outcome added without its place here fails the tests
//! that reach it. Values that come from an enum are taken from its `ALL`, so a new
//! variant is registered without anyone having to remember.
//!
//! `cartbus_http_request_duration_seconds` is not pre-registered: method × route × status
//! would be hundreds of histograms, nearly all never seen.

use std::sync::LazyLock;

use crate::domain::Reason;
use crate::domain::payment::CallOutcome;
use crate::domain::resubmit::Outcome as Resubmit;

pub type List = LazyLock<Vec<&'static str>>;

/// `cartbus_checkouts_total`: what `POST /v1/checkouts` came to.
pub static CHECKOUTS: List = LazyLock::new(|| {
    vec![
        "queued",
        "direct",
        Reason::Conflict.label(),
        "invalid",
        "unavailable",
        "shed",
    ]
});

/// `cartbus_consumer_messages_total`: a cart placed, found placed before, given back
/// or failed (retried), or turned away for a reason (any reason: a cart message can be
/// rejected for each, and the label is [`Reason::label`]).
pub static CONSUMER: List = LazyLock::new(|| {
    let mut list = vec!["created", "duplicate", "released", "failed"];
    list.extend(Reason::ALL.map(Reason::label));
    list
});

/// `cartbus_outbox_events_total`: what the fulfilment hand-off did (`sent` counts every
/// order handed on; `sent_at_commit` those of them the consumer sent right after its
/// commit, the rest went through the polling relay).
pub static OUTBOX: List = LazyLock::new(|| {
    vec![
        "sent",
        "sent_at_commit",
        "audit_copy",
        "send_failed",
        "send_deferred",
        "critical_error",
    ]
});

/// `cartbus_partner_replies_total`: a reply applied, a duplicate, given back or failed
/// (retried), or the reason it was dead-lettered ([`Reason::as_str`], as in
/// `cartbus_dead_letters`).
pub static PARTNER_REPLIES: List = LazyLock::new(|| {
    let mut list = vec!["applied", "duplicate", "released", "failed"];
    list.extend(Reason::dead_lettered().map(Reason::as_str));
    list
});

/// `cartbus_dead_letter_resubmits_total`: every resubmit outcome but a dry run's (dry
/// runs are not counted).
pub static DEAD_LETTER_RESUBMITS: List = LazyLock::new(|| {
    Resubmit::ALL
        .into_iter()
        .filter(|outcome| !outcome.is_dry_run())
        .map(Resubmit::as_str)
        .collect()
});

/// `cartbus_payment_calls_total`: what a capture call came to, and
/// `late_after_resolution` for one that answered after an operator resolved it.
pub static PAYMENT_CALLS: List = LazyLock::new(|| {
    let mut list = CallOutcome::LABELS.to_vec();
    list.push("late_after_resolution");
    list
});

/// `cartbus_webhook_calls_total`: what a call to a webhook receiver came to.
pub static WEBHOOK_CALLS: List =
    LazyLock::new(|| vec!["delivered", "refused", "timeout", "unreachable", "gone"]);

/// `cartbus_smoke_runs_total`: smoke checkouts (`POST /v1/admin/smoke`), apart from real
/// ones: `passed` (every step ran) or `failed`.
pub static SMOKE_RUNS: List = LazyLock::new(|| vec!["passed", "failed"]);
