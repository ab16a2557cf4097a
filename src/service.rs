//! The refresh itself (SPEC section 3) and the snapshot object (SPEC 5.1).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::health::Health;
use crate::retry::{self, Failure, Policy};
use crate::rfc3339;
use crate::store::{Experiment, Store, StoredSnapshot};
use crate::summary::Payload;
use crate::warehouse::{Target, Warehouse};
use crate::window::Window;

/// Where "now" comes from; tests substitute a fixed clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How a refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new snapshot was computed and stored.
    Refreshed,
    /// The stored snapshot is final; nothing was queried.
    Final,
    /// The experiment has not started; nothing was computed.
    NotStarted,
}

impl Outcome {
    /// The name used in answers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Final => "final",
            Outcome::NotStarted => "not_started",
        }
    }
}

/// The snapshot object every answer carrying a snapshot uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotView {
    /// The experiment.
    pub experiment_id: i64,
    /// `None` when nothing has ever been stored.
    pub exposures: Option<Exposures>,
}

/// The stored snapshot as shown to readers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exposures {
    /// End of the window of `payload`.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub as_of: Option<DateTime<Utc>>,
    /// When the last refresh failed (cleared by a good one).
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub last_error_at: Option<DateTime<Utc>>,
    /// When an API refresh was last accepted.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub refresh_requested_at: Option<DateTime<Utc>>,
    /// True once the snapshot covers the whole experiment; never recomputed then.
    pub is_final: bool,
    /// The last good summary.
    pub payload: Option<Value>,
    /// Computed now from `payload` and the current weights; `None` without a payload.
    pub health: Option<Health>,
}

impl SnapshotView {
    /// Combines the experiment with what is stored for it.
    pub fn new(experiment: &Experiment, stored: Option<&StoredSnapshot>) -> Self {
        Self {
            experiment_id: experiment.id,
            exposures: stored.map(|s| Exposures {
                as_of: s.as_of,
                last_error_at: s.last_error_at,
                refresh_requested_at: s.refresh_requested_at,
                is_final: is_final(experiment, s),
                payload: s.payload.clone(),
                health: s
                    .payload
                    .as_ref()
                    .filter(|p| !p.is_null())
                    .map(|p| Health::compute(p, experiment.variant_weights.as_ref())),
            }),
        }
    }
}

/// Final: the experiment ended and the stored window reaches its end.
pub fn is_final(experiment: &Experiment, stored: &StoredSnapshot) -> bool {
    matches!((experiment.ended_at, stored.as_of), (Some(ended), Some(as_of)) if as_of >= ended)
}

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
    clock: Clock,
}

impl App {
    /// Builds the clients; nothing connects until first use, so cold starts stay short.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(Self {
            // The sweep's refreshes plus a few for API reads.
            store: Store::new(&config, config.sweep_concurrency + 4)?,
            warehouse: Warehouse::new(&config)?,
            config,
            clock: Arc::new(Utc::now),
        })
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
        Ok(SnapshotView::new(&experiment, stored.as_ref()))
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
        let Some(started_at) = experiment.started_at else {
            return Ok((
                Outcome::NotStarted,
                SnapshotView::new(experiment, stored.as_ref()),
            ));
        };
        if stored.as_ref().is_some_and(|s| is_final(experiment, s)) {
            return Ok((
                Outcome::Final,
                SnapshotView::new(experiment, stored.as_ref()),
            ));
        }

        let began = Instant::now();
        // One reading of the clock for the window and the time left.
        let now = self.now();
        let window = Window::new(started_at, experiment.ended_at, now);
        let target = Target {
            environment_key: &experiment.environment_key,
            feature_name: &experiment.feature_name,
        };
        // Transient failures are tried again, keeping time to stamp the failure.
        let policy = Policy::new(self.config.clickhouse_attempts, crate::sweep::WRITE_MARGIN);
        let attempt = || self.warehouse.exposures(target, &window);
        let (counts, attempts) = match retry::run(
            &policy,
            instant(deadline, now),
            "exposures query",
            attempt,
        )
        .await
        {
            Ok(done) => done,
            Err(Failure {
                error: source,
                class,
                attempts,
            }) => {
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
                return Err(Error::Warehouse {
                    experiment_id: experiment.id,
                    source,
                });
            }
        };
        let query_ms = began.elapsed().as_millis() as u64;
        let rows = counts.len();
        let payload = Payload::build(window.granularity, counts);
        let payload_json = serde_json::to_value(&payload).unwrap_or(Value::Null);
        let stored = self
            .store
            .store_payload(experiment.id, window.end, &payload_json)
            .await?;
        tracing::info!(
            experiment_id = experiment.id,
            granularity = window.granularity.as_str(),
            as_of = %rfc3339::format(&window.end),
            rows,
            identities = payload.identities(),
            excluded_identities = payload.excluded_identities,
            points = payload.timeseries.points.len(),
            query_ms,
            attempts,
            total_ms = began.elapsed().as_millis() as u64,
            superseded = stored.as_of != Some(window.end),
            "refreshed"
        );
        Ok((
            Outcome::Refreshed,
            SnapshotView::new(experiment, Some(&stored)),
        ))
    }
}
