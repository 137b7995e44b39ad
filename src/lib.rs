//! cartbus: a queue-buffered checkout service. See DESIGN.md for the contract.

//!
//! The modules are layers, bottom to top (`tests/layers.rs` holds the list and checks it):
//! support (`fault`, `telemetry`, `sqlite`, `backoff`) ← `domain` ← `metrics` ← `config` ←
//! `queue` ← `store` ← `service` ← `runtime` ← `http` ← this crate root and `cli`.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod config;
pub mod domain;
mod fault;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod runtime;
pub mod service;
mod sqlite;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, QueueConfig};
use crate::domain::drain::Identity;
use crate::metrics::Metrics;
use crate::queue::embedded::EmbeddedOptions;
use crate::queue::{
    AmqpOptions, AmqpQueue, BrokerCounters, EmbeddedQueue, NodeRegistry, Queue, UnavailableQueue,
};
use crate::runtime::app::{App, AppState};
use crate::service::drain::Control;
use crate::service::intake::{Intake, IntakeSettings};
use crate::service::readiness::Health;
use crate::service::resubmit::Resubmitter;
use crate::store::Db;

/// How often an idle embedded-queue consumer looks for carts sent by other processes.
const EMBEDDED_POLL: Duration = Duration::from_millis(100);

/// A built, bound, not yet running cartbus.
pub struct Application {
    listener: TcpListener,
    app: AppState,
    shutdown: CancellationToken,
}

impl Application {
    /// Opens the database and queue and binds the listener. Neither the database nor the
    /// queue has to be up: the service starts and serves whichever works.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let pools =
            Db::connect_split(&config).context("DATABASE_URL is not a usable database URL")?;
        let db = pools.workers;
        let metrics = Arc::new(Metrics::new());
        let config_kind = config.database.kind.clone();
        let max_in_flight = config.http.max_in_flight;
        let queue = open_queue(&config, &db, &metrics).await;
        let outbox_queue = match &config.queue.backend {
            QueueConfig::Amqp(_) if config.fulfilment.enabled() => {
                open_queue_named(&config, &db, &metrics, "hand-off publisher").await
            }
            _ => queue.clone(),
        };
        let payments = service::payment::Gateway::from_config(&config)
            .context("cannot build the HTTP client for CARTBUS_PAYMENT_URL")?
            .map(Arc::new);
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (CARTBUS_LISTEN)", config.http.listen))?;
        let control = Arc::new(Control::new(
            Identity {
                instance: config.instance.clone(),
                version: config.version.clone(),
                known_schema: store::known_schema_version(&config_kind),
                consumer_enabled: config.consumer.enabled,
            },
            metrics.intake_messages.clone(),
            metrics.drain_messages.clone(),
        ));
        let health = Arc::new(Health::default());
        let intake = Intake {
            queue: queue.clone(),
            conflicts: service::conflicts::ConflictChecks::start(pools.checkouts.clone()),
            db: pools.checkouts,
            metrics: metrics.clone(),
            control: control.clone(),
            health: health.clone(),
            payments: payments.clone(),
            settings: Arc::new(IntakeSettings {
                cart_address: config.queue.cart_address.clone(),
                send_timeout: config.queue.send_timeout,
                conflict_check: config.queue.conflict_check,
                request_timeout: config.http.request_timeout,
            }),
            outage: Arc::default(),
        };
        let admin_failures = runtime::auth_failures::AuthFailures::new(&config.admin.auth_failures);
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let resubmitter = Resubmitter {
            db: db.clone(),
            metrics: metrics.clone(),
            payments: payments.clone(),
            control: control.clone(),
            outbox_wake: outbox_wake.clone(),
            fulfilment: Arc::new(config.fulfilment.clone()),
            resubmit_limit: config.admin.resubmit_limit,
            instance: config.instance.clone(),
            jobs: Arc::default(),
        };
        let app = Arc::new(App {
            config,
            db,
            queue,
            outbox_queue,
            outbox_wake,
            metrics,
            health,
            control,
            intake,
            intake_permits: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            payments,
            admin_failures,
            resubmitter,
            smoke_running: Arc::new(tokio::sync::Mutex::new(())),
        });
        if let Some(gateway) = &app.payments {
            tracing::info!(endpoint = %gateway.endpoint(), timeout = ?app.config.payments.timeout, "payment capture on: carts are captured before they become orders");
        }
        if app.config.admin.token.is_none() {
            tracing::warn!(
                "admin API off (/v1/admin/* answers 404): set CARTBUS_ADMIN_TOKEN (16+ characters) to pause and resume consumers"
            );
        }
        runtime::health::prepare_database(&app).await;
        Ok(Application {
            listener,
            app,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Cancel it to stop the service gracefully (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn state(&self) -> AppState {
        self.app.clone()
    }

    /// Serves until the shutdown token is cancelled, then: readiness false, wait
    /// `CARTBUS_SHUTDOWN_DELAY_SECONDS` for load balancers to notice, stop accepting, finish
    /// in-flight requests and the consumer's batch in hand, give back the rest.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            listener,
            app,
            shutdown,
        } = self;
        let workers_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        // With the hand-off on, consumers hand the orders they write straight to the
        // dispatcher; it stops once every consumer has let go of the line.
        let line = (app.config.fulfilment.enabled() && app.config.consumer.enabled).then(|| {
            let (line, dispatcher) = service::dispatch::line();
            tasks.spawn(runtime::tasks::dispatcher(app.clone(), dispatcher));
            line
        });
        for _ in 0..app.config.consumer.tasks {
            tasks.spawn(runtime::tasks::consumer(
                app.clone(),
                workers_stop.clone(),
                line.clone(),
            ));
        }
        drop(line);
        tasks.spawn(runtime::tasks::relay(app.clone(), workers_stop.clone()));
        tasks.spawn(runtime::tasks::replies(app.clone(), workers_stop.clone()));
        tasks.spawn(runtime::tasks::webhooks(app.clone(), workers_stop.clone()));
        tasks.spawn(runtime::health::monitor(app.clone(), workers_stop.clone()));
        tasks.spawn(runtime::tasks::drain_watch(
            app.clone(),
            workers_stop.clone(),
        ));

        let drain = {
            let app = app.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                app.health.begin_shutdown();
                tracing::info!(delay = ?app.config.shutdown.delay, "shutting down: not ready any more");
                tokio::time::sleep(app.config.shutdown.delay).await;
            }
        };
        let server = http::server::serve(
            listener,
            http::router(app.clone()),
            &app.config.http.limits,
            &app.metrics,
            drain,
        );
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => {}
            _ = shutdown.cancelled() => {
                workers_stop.cancel();
                let grace = app.config.shutdown.delay + app.config.shutdown.timeout;
                if tokio::time::timeout(grace, &mut server).await.is_err() {
                    tracing::warn!("in-flight requests did not finish in time; closing them");
                }
            }
        };
        workers_stop.cancel();
        tasks.close();
        if tokio::time::timeout(app.config.shutdown.timeout, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "background work did not finish in time; unsettled deliveries return when their leases expire"
            );
        }
        app.queue.shutdown().await;
        if !Arc::ptr_eq(&app.queue, &app.outbox_queue) {
            app.outbox_queue.shutdown().await;
        }
        app.db.close().await;
        app.intake.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The queue `CARTBUS_QUEUE_URL` names; an unusable one stands in as [`UnavailableQueue`].
pub async fn open_queue(config: &Config, db: &Db, metrics: &Metrics) -> Arc<dyn Queue> {
    open_queue_named(config, db, metrics, "publisher").await
}

/// [`open_queue`], its publishing connection called `publisher` in logs, metrics and the
/// admin API.
async fn open_queue_named(
    config: &Config,
    db: &Db,
    metrics: &Metrics,
    publisher: &'static str,
) -> Arc<dyn Queue> {
    match &config.queue.backend {
        QueueConfig::Embedded { path } => {
            let options = EmbeddedOptions {
                owner: config.instance.clone(),
                lease: config.queue.lease,
                max_attempts: config.consumer.max_attempts,
                poll_interval: EMBEDDED_POLL,
            };
            match EmbeddedQueue::open(path, options).await {
                Ok(queue) => Arc::new(queue),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "embedded queue unavailable; checkouts will be written directly as orders");
                    Arc::new(UnavailableQueue {
                        kind: "embedded",
                        reason: e.to_string(),
                    })
                }
            }
        }
        QueueConfig::Amqp(broker) => {
            tracing::info!(nodes = %broker.endpoints(), address = %config.queue.cart_address, %publisher, "using an AMQP 1.0 broker");
            Arc::new(AmqpQueue::start(
                AmqpOptions {
                    broker: broker.clone(),
                    instance: config.instance.clone(),
                    cart_address: config.queue.cart_address.clone(),
                    publisher,
                    nodes: NodeRegistry::new(metrics.broker_connections.clone()),
                    send_timeout: config.queue.send_timeout,
                    counters: BrokerCounters {
                        connects: metrics.queue_connects.clone(),
                        losses: metrics.queue_connection_losses.clone(),
                    },
                },
                Arc::new(db.clone()),
            ))
        }
    }
}
