//! An experiment as the function sees it.

use chrono::{DateTime, Utc};

use crate::domain::health::Weights;

/// An experiment, as read from the experiments relation.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Its id.
    pub id: i64,
    /// Environment the exposures come from.
    pub environment_key: String,
    /// The flag.
    pub feature_name: String,
    /// `created`, `running`, `paused` or `completed`.
    pub status: String,
    /// Set on first start; `None` means not started.
    pub started_at: Option<DateTime<Utc>>,
    /// Set on completion.
    pub ended_at: Option<DateTime<Utc>>,
    /// The intended split, for the health checks; `None` when the relation has
    /// no such column, the value is null, or it is malformed (logged).
    pub variant_weights: Option<Weights>,
}
