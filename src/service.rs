//! The refresh itself (SPEC section 3) and the snapshot object (SPEC 5.1).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::domain::experiment::Experiment;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::incremental::{self, Base, FullReason};
use crate::domain::rfc3339;
use crate::domain::snapshot::{is_final, Outcome, SnapshotView, StoredSnapshot, StoredWindow};
use crate::domain::summary::{identities_in, Payload};
use crate::domain::window::Window;
use crate::error::Error;
use crate::metrics::{self, Metrics, Sink};
use crate::retry::{self, Failure, Policy};
use crate::store::{Good, Store};
use crate::warehouse::{Delta, Target, Warehouse, WarehouseError};

/// Where "now" comes from; tests substitute a fixed clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A deadline as a monotonic instant (what timers take), `now` being the
/// current time by the app's clock (the one the deadline is compared with).
fn instant(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<tokio::time::Instant> {
    deadline.map(|d| tokio::time::Instant::now() + (d - now).to_std().unwrap_or_default())
}

/// The function's state: clients built once per container, shared by invocations.
pub struct App {
    /// PostgreSQL.
    pub store: Store,
    /// ClickHouse.
    pub warehouse: Warehouse,
    /// The configuration it was built from.
    pub config: Config,
    /// CloudWatch metrics (EMF lines on stdout).
    pub metrics: Metrics,
    clock: Clock,
}

impl App {
    /// Builds the clients; nothing connects until first use, so cold starts stay short.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(Self {
            // The sweep's refreshes plus a few for API reads.
            store: Store::new(&config, config.sweep_concurrency + 4)?,
            warehouse: Warehouse::new(&config)?,
            metrics: Metrics::new(&config),
            config,
            clock: Arc::new(Utc::now),
        })
    }

    /// Replaces where metrics go (tests).
    pub fn with_metrics_sink(mut self, sink: Sink) -> Self {
        self.metrics = self.metrics.with_sink(sink);
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current time by this app's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The snapshot object of `experiment`, its health as of now.
    pub fn view(&self, experiment: &Experiment, stored: Option<&StoredSnapshot>) -> SnapshotView {
        SnapshotView::new(experiment, stored, self.now(), &self.config.limits)
    }

    /// Loads an experiment and its stored snapshot; unknown ids are an error.
    pub async fn load(
        &self,
        experiment_id: i64,
    ) -> Result<(Experiment, Option<StoredSnapshot>), Error> {
        self.store
            .load(experiment_id)
            .await?
            .ok_or(Error::UnknownExperiment(experiment_id))
    }

    /// Refuses experiments outside `EXPOSURES_API_ALLOWED_ENVIRONMENTS`, when it is set.
    pub fn authorize(&self, experiment: &Experiment) -> Result<(), Error> {
        match &self.config.api_allowed_environments {
            Some(allowed) if !allowed.contains(&experiment.environment_key) => {
                Err(Error::Forbidden(experiment.id))
            }
            _ => Ok(()),
        }
    }

    /// Reads the stored snapshot without touching ClickHouse.
    pub async fn snapshot(&self, experiment_id: i64) -> Result<SnapshotView, Error> {
        let (experiment, stored) = self.load(experiment_id).await?;
        Ok(self.view(&experiment, stored.as_ref()))
    }

    /// Refreshes one experiment (README "Invocations"). `deadline` is when Lambda stops
    /// the invocation: ClickHouse retries never run past it (see [`retry`]).
    pub async fn refresh(
        &self,
        experiment_id: i64,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(Outcome, SnapshotView), Error> {
        let (experiment, stored) = self.load(experiment_id).await?;
        self.refresh_loaded(&experiment, stored, deadline).await
    }

    /// Refreshes an experiment already loaded: returns the stored snapshot for
    /// not-started and final experiments, otherwise queries, stores, and only then answers.
    pub async fn refresh_loaded(
        &self,
        experiment: &Experiment,
        stored: Option<StoredSnapshot>,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(Outcome, SnapshotView), Error> {
        let (outcome, view, _) = self.refresh_with_mode(experiment, stored, deadline).await?;
        Ok((outcome, view))
    }

    /// [`App::refresh_loaded`], also telling how the payload was computed
    /// (`None` when nothing was computed).
    pub async fn refresh_with_mode(
        &self,
        experiment: &Experiment,
        stored: Option<StoredSnapshot>,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(Outcome, SnapshotView, Option<Mode>), Error> {
        let Some(started_at) = experiment.started_at else {
            return Ok((
                Outcome::NotStarted,
                self.view(experiment, stored.as_ref()),
                None,
            ));
        };
        if stored.as_ref().is_some_and(|s| is_final(experiment, s)) {
            return Ok((Outcome::Final, self.view(experiment, stored.as_ref()), None));
        }

        // One reading of the clock for the window, the time left, the answer
        // and the metrics (the sweep's budget checks depend on it).
        let now = self.now();
        let began = Instant::now();
        let before = stored
            .as_ref()
            .and_then(|s| s.payload.as_ref())
            .map_or(0, identities_in);
        let result = self
            .refresh_started(experiment, started_at, stored, deadline, now, began)
            .await;
        let (failed, incremental, after) = match &result {
            Ok((_, view, mode)) => (
                false,
                *mode == Some(Mode::Incremental),
                view.exposures
                    .as_ref()
                    .and_then(|e| e.payload.as_ref())
                    .map_or(0, identities_in),
            ),
            Err(_) => (true, false, before),
        };
        self.metrics.refresh(
            now,
            &metrics::Refresh {
                experiment_id: experiment.id,
                duration_ms: began.elapsed().as_millis() as u64,
                failed,
                incremental,
                new_identities: after as i64 - before as i64,
            },
        );
        result
    }

    /// The refresh of a started experiment that is not final: computes, stores, answers.
    async fn refresh_started(
        &self,
        experiment: &Experiment,
        started_at: DateTime<Utc>,
        stored: Option<StoredSnapshot>,
        deadline: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        began: Instant,
    ) -> Result<(Outcome, SnapshotView, Option<Mode>), Error> {
        let window = Window::new(started_at, experiment.ended_at, now);
        let target = Target {
            environment_key: &experiment.environment_key,
            feature_name: &experiment.feature_name,
        };
        // Transient failures are tried again, keeping time to stamp the failure.
        let policy = Policy::new(self.config.clickhouse_attempts, retry::WRITE_MARGIN);
        let until = instant(deadline, now);
        let fail = |failure: Failure<WarehouseError>| async move {
            let Failure {
                error: source,
                class,
                attempts,
            } = failure;
            let query_ms = began.elapsed().as_millis() as u64;
            if let Err(stamp) = self.store.store_failure(experiment.id, window.end).await {
                tracing::error!(experiment_id = experiment.id, error = %stamp, "could not stamp the failed refresh");
            }
            tracing::error!(
                experiment_id = experiment.id,
                granularity = window.granularity.as_str(),
                query_ms,
                class = class.as_str(),
                attempts,
                error = %source,
                "refresh failed"
            );
            Error::Warehouse {
                experiment_id: experiment.id,
                source,
            }
        };
        let mut base = incremental::base(experiment, &window, stored.as_ref());
        let mut attempts = 0;
        let (result, stored) = loop {
            // Each attempt computes afresh (every query is a read, safe to repeat).
            let (result, made) = match retry::run(&policy, until, "exposures query", || {
                self.compute(target, &window, base.clone())
            })
            .await
            {
                Ok(done) => done,
                Err(failure) => return Err(fail(failure).await),
            };
            attempts += made;
            let stored = self.store_result(experiment.id, &window, &result).await?;
            if result.base.is_ok() && stored.as_of < Some(window.end) {
                // Another refresh stored a snapshot after the one this change was computed
                // against, but before this window's end: the change does not apply to it.
                // Once more in full (which is stored by the `as_of` rule alone).
                base = Err(FullReason::Race);
                continue;
            }
            break (result, stored);
        };
        let payload = &result.payload;
        let mode = result.mode();
        tracing::info!(
            experiment_id = experiment.id,
            granularity = window.granularity.as_str(),
            as_of = %rfc3339::format(&window.end),
            mode = mode.as_str(),
            plan = self.warehouse.plan_name(),
            full_reason = mode.full_reason().map(FullReason::as_str),
            rows = result.rows,
            window_rows = result.fingerprint.rows,
            identities = payload.identities(),
            excluded_identities = payload.excluded_identities,
            points = payload.timeseries.points.len(),
            query_ms = result.query_ms,
            attempts,
            total_ms = began.elapsed().as_millis() as u64,
            superseded = stored.as_of != Some(window.end),
            "refreshed"
        );
        Ok((
            Outcome::Refreshed,
            SnapshotView::new(experiment, Some(&stored), now, &self.config.limits),
            Some(mode),
        ))
    }

    /// Computes the payload of `window`: incrementally from `base` when it is
    /// there, the earlier window is proven unchanged and the change is small
    /// enough, else in full (the reason is kept for the log).
    async fn compute(
        &self,
        target: Target<'_>,
        window: &Window,
        base: Result<Base<'_>, FullReason>,
    ) -> Result<Computation, WarehouseError> {
        let began = Instant::now();
        let reason = match base {
            Err(reason) => reason,
            Ok(base) => match self.incremental(target, window, &base).await? {
                Ok((payload, delta)) => {
                    return Ok(Computation {
                        payload,
                        fingerprint: delta.window,
                        rows: delta.transitions.len(),
                        base: Ok(base.as_of),
                        query_ms: began.elapsed().as_millis() as u64,
                    })
                }
                Err(reason) => reason,
            },
        };
        let computed = self.warehouse.exposures(target, window).await?;
        Ok(Computation {
            rows: computed.counts.len(),
            payload: Payload::build(window.granularity, computed.counts),
            fingerprint: computed.fingerprint,
            base: Err(reason),
            query_ms: began.elapsed().as_millis() as u64,
        })
    }

    /// The incremental computation, or why it cannot be used.
    async fn incremental(
        &self,
        target: Target<'_>,
        window: &Window,
        base: &Base<'_>,
    ) -> Result<Result<(Payload, Delta), FullReason>, WarehouseError> {
        let changed = self
            .warehouse
            .delta_rows(target, window, base.as_of)
            .await?;
        if incremental::is_large_change(changed, base.window.fingerprint.rows) {
            return Ok(Err(FullReason::LargeChange));
        }
        let delta = self
            .warehouse
            .incremental(target, window, base.as_of)
            .await?;
        if delta.before != base.window.fingerprint {
            return Ok(Err(FullReason::ChangedWindow));
        }
        if !delta.complete {
            return Ok(Err(FullReason::ConcurrentInsert));
        }
        if !delta.keys_distinct {
            return Ok(Err(FullReason::KeyCollision));
        }
        let applied = Payload::from_json(base.payload)
            .and_then(|stored| stored.apply(window.granularity, &delta.transitions));
        Ok(match applied {
            Ok(payload) => Ok((payload, delta)),
            Err(error) => {
                tracing::warn!(%error, "stored payload cannot take the change; computing in full");
                Err(FullReason::Inconsistent)
            }
        })
    }

    async fn store_result(
        &self,
        experiment_id: i64,
        window: &Window,
        result: &Computation,
    ) -> Result<StoredSnapshot, Error> {
        let payload_json = serde_json::to_value(&result.payload).unwrap_or(Value::Null);
        Ok(self
            .store
            .store_refresh(
                experiment_id,
                Good {
                    as_of: window.end,
                    payload: &payload_json,
                    window: Some(StoredWindow {
                        start: window.start,
                        fingerprint: result.fingerprint,
                    }),
                    base: result.base.ok(),
                },
            )
            .await?)
    }
}

/// How a refresh computed its payload (logged as `mode` and `full_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Over the whole window, for this reason.
    Full(FullReason),
    /// From the stored snapshot and what changed since its `as_of`.
    Incremental,
}

impl Mode {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full(_) => "full",
            Mode::Incremental => "incremental",
        }
    }

    /// Why the refresh was full; `None` when it was incremental.
    pub fn full_reason(self) -> Option<FullReason> {
        match self {
            Mode::Full(reason) => Some(reason),
            Mode::Incremental => None,
        }
    }
}

/// A computed payload and how it was computed.
struct Computation {
    payload: Payload,
    fingerprint: Fingerprint,
    /// Result rows of the query (buckets, or transitions).
    rows: usize,
    /// `as_of` of the snapshot an incremental result changes, or why it is full.
    base: Result<DateTime<Utc>, FullReason>,
    query_ms: u64,
}

impl Computation {
    fn mode(&self) -> Mode {
        match self.base {
            Ok(_) => Mode::Incremental,
            Err(reason) => Mode::Full(reason),
        }
    }
}
