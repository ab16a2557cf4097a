//! The scheduled sweep (SPEC 5.4): refresh every due experiment, a few at a
//! time, isolating failures, and never starting a refresh the invocation
//! cannot finish before Lambda's deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use serde::Serialize;

use crate::domain::health::Code;
use crate::domain::snapshot::{self, Outcome};
use crate::error::Error;
use crate::metrics;
use crate::retry;
use crate::service::App;

/// What a sweep did, by experiment id (each list ascending).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Refreshed and stored.
    pub refreshed: Vec<i64>,
    /// Refresh failed (stamped and logged).
    pub failed: Vec<i64>,
    /// Not refreshed: too little time left, or nothing to do after all.
    pub skipped: Vec<i64>,
}

/// True when a refresh started at `now` is sure to end before `deadline`:
/// its query is bounded by `query_timeout`, its write by [`retry::WRITE_MARGIN`].
pub fn can_start(
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    query_timeout: Duration,
) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    let needed = chrono::TimeDelta::from_std(query_timeout + retry::WRITE_MARGIN)
        .unwrap_or(chrono::TimeDelta::MAX);
    deadline - now >= needed
}

enum Done {
    Refreshed,
    Failed,
    Skipped,
}

/// Runs the sweep. Fails only if the due experiments cannot be listed.
pub async fn refresh_due(app: &App, deadline: Option<DateTime<Utc>>) -> Result<SweepReport, Error> {
    let began = std::time::Instant::now();
    let due = app.store.due_experiments().await?;
    // The deadline itself, not the time left: reading the clock here would make
    // the sweep's timing depend on whether logging is enabled.
    tracing::info!(
        due = due.len(),
        deadline = deadline.map(|d| crate::rfc3339::format(&d)),
        "sweep started"
    );
    let timeout = app.config.query_timeout;
    let results: Vec<(i64, Done)> = stream::iter(due.iter().copied())
        .map(|id| async move {
            // Checked when a slot frees up, not when the sweep starts.
            if !can_start(app.now(), deadline, timeout) {
                return (id, Done::Skipped);
            }
            match app.refresh(id, deadline).await {
                Ok((Outcome::Refreshed, _)) => (id, Done::Refreshed),
                Ok(_) => (id, Done::Skipped),
                Err(error) => {
                    tracing::warn!(experiment_id = id, error = %error, "sweep: refresh failed");
                    (id, Done::Failed)
                }
            }
        })
        .buffer_unordered(app.config.sweep_concurrency)
        .collect()
        .await;

    let mut report = SweepReport::default();
    for (id, result) in results {
        match result {
            Done::Refreshed => report.refreshed.push(id),
            Done::Failed => report.failed.push(id),
            Done::Skipped => report.skipped.push(id),
        }
    }
    report.refreshed.sort_unstable();
    report.failed.sort_unstable();
    report.skipped.sort_unstable();
    report_metrics(app, &report).await;
    tracing::info!(
        due = due.len(),
        refreshed = report.refreshed.len(),
        failed = report.failed.len(),
        skipped = report.skipped.len(),
        total_ms = began.elapsed().as_millis() as u64,
        "sweep finished"
    );
    Ok(report)
}

/// The sweep's metrics (SPEC 7b), from the running experiments as stored now.
/// A failure to read them is logged: the sweep's refreshes are done by then.
async fn report_metrics(app: &App, report: &SweepReport) {
    let running = match app.store.running_experiments().await {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(%error, "sweep: running experiments not read; no sweep metrics");
            return;
        }
    };
    let now = app.now();
    let mut sweep = metrics::Sweep {
        running_experiments: running.len() as u64,
        skipped: report.skipped.len() as u64,
        max_snapshot_age_seconds: 0,
        findings: Code::ALL.iter().map(|code| (*code, 0)).collect(),
    };
    for (experiment, stored) in &running {
        let since = stored
            .as_ref()
            .and_then(|s| s.as_of)
            .or(experiment.started_at);
        if let Some(since) = since {
            let age = (now - since).num_seconds().max(0) as u64;
            sweep.max_snapshot_age_seconds = sweep.max_snapshot_age_seconds.max(age);
        }
        let findings = stored
            .as_ref()
            .and_then(|s| snapshot::health(experiment, s, now, &app.config.limits))
            .map(|h| h.findings);
        for finding in findings.into_iter().flatten() {
            *sweep.findings.entry(finding.code).or_default() += 1;
        }
    }
    app.metrics.sweep(now, &sweep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn starts_only_with_room_for_the_query_and_the_write() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let timeout = Duration::from_secs(20);
        assert!(can_start(now, None, timeout));
        assert!(can_start(
            now,
            Some(now + chrono::TimeDelta::seconds(25)),
            timeout
        ));
        assert!(!can_start(
            now,
            Some(now + chrono::TimeDelta::milliseconds(24_999)),
            timeout
        ));
        assert!(!can_start(
            now,
            Some(now - chrono::TimeDelta::seconds(1)),
            timeout
        ));
    }
}
