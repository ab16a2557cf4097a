//! A stored snapshot, and the snapshot object every answer carrying one uses (SPEC 5.1).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::domain::experiment::Experiment;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::health::{Facts, Health, Limits};
use crate::domain::rfc3339;

/// The stored row of `experiment_exposures`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSnapshot {
    /// End of the stored payload's window.
    pub as_of: Option<DateTime<Utc>>,
    /// The last good summary.
    pub payload: Option<Value>,
    /// When the last refresh failed, if it did after the last good one.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When an API refresh was last accepted.
    pub refresh_requested_at: Option<DateTime<Utc>>,
    /// Last write of any kind.
    pub updated_at: DateTime<Utc>,
    /// What the stored payload's window held, when known (an incremental refresh starts from it).
    pub window: Option<StoredWindow>,
}

/// The window a stored payload counts, as an incremental refresh needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWindow {
    /// The `started_at` it was computed from.
    pub start: DateTime<Utc>,
    /// What it held.
    pub fingerprint: Fingerprint,
}

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
    /// Combines the experiment with what is stored for it, its health as of `now`.
    pub fn new(
        experiment: &Experiment,
        stored: Option<&StoredSnapshot>,
        now: DateTime<Utc>,
        limits: &Limits,
    ) -> Self {
        Self {
            experiment_id: experiment.id,
            exposures: stored.map(|s| Exposures {
                as_of: s.as_of,
                last_error_at: s.last_error_at,
                refresh_requested_at: s.refresh_requested_at,
                is_final: is_final(experiment, s),
                payload: s.payload.clone(),
                health: health(experiment, s, now, limits),
            }),
        }
    }
}

/// The health of a stored snapshot as of `now` (SPEC 5.5, 5.6); `None` without a payload.
pub fn health(
    experiment: &Experiment,
    stored: &StoredSnapshot,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Option<Health> {
    let payload = stored.payload.as_ref().filter(|p| !p.is_null())?;
    let facts = Facts {
        status: &experiment.status,
        started_at: experiment.started_at,
        as_of: stored.as_of,
        last_error_at: stored.last_error_at,
        now,
    };
    Some(Health::compute(
        payload,
        experiment.variant_weights.as_ref(),
        &facts,
        limits,
    ))
}

/// Final: the experiment ended and the stored window reaches its end.
pub fn is_final(experiment: &Experiment, stored: &StoredSnapshot) -> bool {
    matches!((experiment.ended_at, stored.as_of), (Some(ended), Some(as_of)) if as_of >= ended)
}
