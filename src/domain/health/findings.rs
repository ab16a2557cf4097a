//! What is wrong with an experiment now (SPEC 5.6): a pure function of the
//! experiment, its stored snapshot, the health tests and the clock, so every
//! boundary is unit-tested here and the sweep counts the same findings a
//! reader sees.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::sample_ratio::{SampleRatio, Status};
use super::MultipleExposure;
use crate::domain::rfc3339;

/// One problem, as `health.findings` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What is wrong.
    pub code: Code,
    /// `error` or `warning`.
    pub severity: Severity,
    /// When the condition began, where that is known.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub since: Option<DateTime<Utc>>,
    /// One sentence with the numbers behind it.
    pub detail: String,
}

/// A finding's code; declared in the order findings of one severity are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Many identities saw more than one variant.
    MultipleExposure,
    /// Running past the grace period and nobody counted.
    NoExposures,
    /// The last refresh failed after the stored snapshot.
    RefreshFailing,
    /// Sample ratio mismatch by the sequential test.
    Srm,
    /// The stored snapshot is older than the stale limit.
    Stale,
    /// No first exposure for a long time while running.
    Stalled,
    /// Variants seen that are not arms.
    UnexpectedVariants,
}

impl Code {
    /// Every code, in the contract's (alphabetical) order.
    pub const ALL: [Code; 7] = [
        Code::MultipleExposure,
        Code::NoExposures,
        Code::RefreshFailing,
        Code::Srm,
        Code::Stale,
        Code::Stalled,
        Code::UnexpectedVariants,
    ];

    /// The name in answers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MultipleExposure => "multiple_exposure",
            Code::NoExposures => "no_exposures",
            Code::RefreshFailing => "refresh_failing",
            Code::Srm => "srm",
            Code::Stale => "stale",
            Code::Stalled => "stalled",
            Code::UnexpectedVariants => "unexpected_variants",
        }
    }

    /// How bad it is.
    pub fn severity(self) -> Severity {
        match self {
            Code::Srm | Code::UnexpectedVariants | Code::NoExposures | Code::RefreshFailing => {
                Severity::Error
            }
            Code::MultipleExposure | Code::Stalled | Code::Stale => Severity::Warning,
        }
    }
}

/// Errors are listed before warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something is wrong with the experiment's data or its refresh.
    Error,
    /// Worth a look.
    Warning,
}

/// The three thresholds (`EXPOSURES_NO_EXPOSURES_AFTER_HOURS`,
/// `EXPOSURES_STALLED_AFTER_HOURS`, `EXPOSURES_STALE_AFTER_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Grace period before a running experiment with nobody counted is a finding.
    pub no_exposures_after: TimeDelta,
    /// How long after the last point's bucket a running experiment is stalled.
    pub stalled_after: TimeDelta,
    /// How old a running experiment's snapshot may be.
    pub stale_after: TimeDelta,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            no_exposures_after: TimeDelta::hours(24),
            stalled_after: TimeDelta::hours(24),
            stale_after: TimeDelta::seconds(3600),
        }
    }
}

/// What the findings need to know about the experiment, its snapshot and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The experiment's status (`running`, `paused`, ...).
    pub status: &'a str,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// End of the stored payload's window.
    pub as_of: Option<DateTime<Utc>>,
    /// When the last refresh failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the answer is made.
    pub now: DateTime<Utc>,
}

/// The series facts the findings read from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Series {
    /// Identities counted in any point.
    pub identities: u64,
    /// Identities in `excluded_identities`.
    pub excluded: u64,
    /// End of the last point's bucket, if there is a point.
    pub last_bucket_end: Option<DateTime<Utc>>,
}

/// The findings, most severe first, then by code.
pub(super) fn findings(
    facts: &Facts<'_>,
    limits: &Limits,
    series: &Series,
    sample_ratio: &SampleRatio,
    multiple_exposure: &MultipleExposure,
) -> Vec<Finding> {
    let running = facts.status == "running";
    let mut out = Vec::new();
    let mut add = |code: Code, since: Option<DateTime<Utc>>, detail: String| {
        out.push(Finding {
            code,
            severity: code.severity(),
            since,
            detail,
        })
    };
    if let Some(seq) = sample_ratio
        .sequential
        .as_ref()
        .filter(|s| s.status == Status::Mismatch)
    {
        add(
            Code::Srm,
            seq.onset_bucket,
            format!(
                "The split over the arms is unlikely under the weights: sequential p-value {:.3e} (below 0.001).",
                seq.p_value
            ),
        );
    }
    if !sample_ratio.unexpected_variants.is_empty() {
        add(
            Code::UnexpectedVariants,
            None,
            format!(
                "{} variant(s) seen that have no positive weight: {}.",
                sample_ratio.unexpected_variants.len(),
                sample_ratio.unexpected_variants.join(", ")
            ),
        );
    }
    if multiple_exposure.warning {
        add(
            Code::MultipleExposure,
            None,
            format!(
                "{} identities ({:.2}%) saw more than one variant and are excluded.",
                multiple_exposure.excluded_identities,
                multiple_exposure.share * 100.0
            ),
        );
    }
    if let Some(started_at) = facts.started_at.filter(|_| running) {
        let since = started_at + limits.no_exposures_after;
        if facts.now >= since && series.identities == 0 && series.excluded == 0 {
            add(
                Code::NoExposures,
                Some(since),
                format!(
                    "Running for {} hours and no identity has been counted.",
                    (facts.now - started_at).num_hours()
                ),
            );
        }
    }
    if let (Some(end), Some(as_of)) = (series.last_bucket_end.filter(|_| running), facts.as_of) {
        if as_of - end >= limits.stalled_after {
            add(
                Code::Stalled,
                Some(end),
                format!(
                    "No first exposure for {} hours before the snapshot's as_of (last bucket ended {}).",
                    (as_of - end).num_hours(),
                    rfc3339::format(&end)
                ),
            );
        }
    }
    if let Some(failed) = facts.last_error_at {
        if facts.as_of.is_none_or(|as_of| failed > as_of) {
            add(
                Code::RefreshFailing,
                None,
                format!(
                    "The last refresh failed at {}, after the stored snapshot{}.",
                    rfc3339::format(&failed),
                    facts
                        .as_of
                        .map(|a| format!(" (as_of {})", rfc3339::format(&a)))
                        .unwrap_or_default()
                ),
            );
        }
    }
    if let Some(as_of) = facts.as_of.filter(|_| running) {
        if facts.now - as_of >= limits.stale_after {
            add(
                Code::Stale,
                Some(as_of + limits.stale_after),
                format!(
                    "The snapshot is {} seconds old (limit {}).",
                    (facts.now - as_of).num_seconds(),
                    limits.stale_after.num_seconds()
                ),
            );
        }
    }
    out.sort_by_key(|f| (f.severity, f.code));
    out
}

#[cfg(test)]
#[path = "findings_tests.rs"]
mod tests;
