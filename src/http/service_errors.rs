//! How each service's (and store's) error answers over HTTP: one `From` per error enum,
//! so that a handler ends its service call in `?` and every status is decided here.
//! They live in the HTTP layer, which owns [`ApiError`]; the services know nothing of it.

use super::problem::{ApiError, DATABASE_UNAVAILABLE};
use crate::service::intake::IntakeError;
use crate::service::payment::resolve::ResolveError;
use crate::service::resubmit;
use crate::service::resubmit_jobs::JobError;
use crate::store::StoreError;

/// What a 503 says when intake could neither queue nor write a cart.
pub const INTAKE_UNAVAILABLE: &str =
    "the cart could be neither queued nor written; nothing was stored, retry later";

/// A database that is away, or refuses a statement (a table not migrated yet, say), is a
/// 503 to retry, as the instance's readiness also says; a broken invariant is a bug, 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Transient(_) | StoreError::Permanent(_) => {
                ApiError::unavailable_because(DATABASE_UNAVAILABLE, e)
            }
            StoreError::Invariant(_) => ApiError::Internal(e.into()),
        }
    }
}

/// For store functions that still answer in the driver's error.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            IntakeError::Unavailable => ApiError::unavailable(INTAKE_UNAVAILABLE),
        }
    }
}

impl From<resubmit::Error> for ApiError {
    fn from(e: resubmit::Error) -> Self {
        use resubmit::Error as E;
        match e {
            E::NotFound(_) => ApiError::NotFound(e.to_string()),
            E::Deleted(_) | E::Resolved { .. } | E::LimitReached { .. } | E::Gated(_) => {
                ApiError::Conflict(e.to_string())
            }
            E::CannotCorrectReply => ApiError::field("/cart", e.to_string()),
            // The payment step cannot be decided yet: the same "retry shortly" as an outage.
            E::Retry(why) => ApiError::unavailable(why),
            E::Database(e) => e.into(),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Mismatch(_) => ApiError::Conflict(e.to_string()),
            JobError::Database(e) => StoreError::from(e).into(),
        }
    }
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ResolveError::Conflict(_) => ApiError::Conflict(e.to_string()),
            ResolveError::Database(e) => e.into(),
        }
    }
}
