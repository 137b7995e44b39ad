//! Keeps readiness honest: migrates the database once it can, then watches that it answers.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::app::{App, AppState};

const CHECK_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies this binary's migrations; on success orders may be written.
pub async fn prepare_database(app: &App) -> bool {
    match tokio::time::timeout(MIGRATE_TIMEOUT, app.db.migrate()).await {
        Ok(Ok(())) => {
            app.health.set_migrated();
            app.health.set_database_up(true);
            tracing::info!(database = app.db.kind(), "database ready");
            true
        }
        Ok(Err(e)) => {
            tracing::error!(database = app.db.kind(), error = %e, "database not ready; checkouts queue meanwhile, retrying");
            false
        }
        Err(_) => {
            tracing::error!(
                database = app.db.kind(),
                "database did not answer; checkouts queue meanwhile, retrying"
            );
            false
        }
    }
}

pub async fn monitor(app: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !app.health.migrated() {
            prepare_database(&app).await;
            continue;
        }
        let up = matches!(
            tokio::time::timeout(PING_TIMEOUT, app.db.ping()).await,
            Ok(Ok(()))
        );
        if up != app.health.database_up() {
            if up {
                tracing::info!("database reachable again");
            } else {
                tracing::warn!("database unreachable");
            }
        }
        app.health.set_database_up(up);
    }
}
