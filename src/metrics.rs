//! CloudWatch metrics in Embedded Metric Format (SPEC 7b): one JSON object
//! alone on its own line of standard output, which CloudWatch Logs turns into
//! metrics with no SDK call and no added latency.
//!
//! Written by hand: the EMF crates pull in the `metrics` facade or a whole
//! telemetry framework for what is one `serde_json::json!` per record. The
//! records go straight to stdout, never through `tracing` (a metrics object
//! nested in a log record is not extracted). Under the template's
//! `LogFormat: JSON`, Lambda passes a custom runtime's stdout lines through as
//! they are (README "Metrics").

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::domain::health::Code;

/// Where records go: stdout in Lambda, a buffer in tests.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// What one refresh that ran reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// The experiment.
    pub experiment_id: i64,
    /// Wall time of the refresh, failed or not.
    pub duration_ms: u64,
    /// It failed (nothing new was stored).
    pub failed: bool,
    /// It started from the stored snapshot.
    pub incremental: bool,
    /// Identities counted after it minus before it (0 when it failed).
    pub new_identities: i64,
}

/// What one sweep reports, after its refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Experiments with status `running`.
    pub running_experiments: u64,
    /// Ids the sweep skipped.
    pub skipped: u64,
    /// The oldest running experiment's snapshot age.
    pub max_snapshot_age_seconds: u64,
    /// Running experiments with each finding, every code present.
    pub findings: BTreeMap<Code, u64>,
}

/// The metrics writer, built once per container.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    per_experiment: bool,
    sink: Sink,
}

impl Metrics {
    /// Writes to standard output, namespace and dimensions as configured.
    pub fn new(config: &Config) -> Self {
        Self {
            namespace: config.metrics_namespace.clone(),
            per_experiment: config.metrics_per_experiment,
            sink: Arc::new(stdout_line),
        }
    }

    /// Replaces where the records go (tests).
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self
    }

    /// Reports one refresh, stamped `at`: when it began (its window's end).
    pub fn refresh(&self, at: DateTime<Utc>, refresh: &Refresh) {
        (self.sink)(&refresh_record(&self.namespace, self.per_experiment, at, refresh).to_string());
    }

    /// Reports one sweep.
    pub fn sweep(&self, at: DateTime<Utc>, sweep: &Sweep) {
        for record in sweep_records(&self.namespace, at, sweep) {
            (self.sink)(&record.to_string());
        }
    }
}

/// One line, written whole, so a concurrent log line cannot split it.
fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing sensible to do when stdout is gone; a metric is not worth a failed refresh.
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// An EMF object: the `_aws` directive for `metrics` (name, unit, value) under
/// each of `dimension_sets`, the values and `dimensions` at the top level.
fn record(
    namespace: &str,
    at: DateTime<Utc>,
    dimension_sets: &[&[&str]],
    dimensions: &[(&str, String)],
    metrics: &[(&str, &str, Value)],
) -> Value {
    let mut object = Map::new();
    object.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": dimension_sets,
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    for (name, value) in dimensions {
        object.insert((*name).into(), Value::String(value.clone()));
    }
    for (name, _, value) in metrics {
        object.insert((*name).into(), value.clone());
    }
    Value::Object(object)
}

/// The record of one refresh: dimension sets `[]` and, per experiment, `["ExperimentId"]`.
pub fn refresh_record(
    namespace: &str,
    per_experiment: bool,
    at: DateTime<Utc>,
    r: &Refresh,
) -> Value {
    let sets: &[&[&str]] = if per_experiment {
        &[&[], &["ExperimentId"]]
    } else {
        &[&[]]
    };
    record(
        namespace,
        at,
        sets,
        &[("ExperimentId", r.experiment_id.to_string())],
        &[
            ("RefreshDuration", "Milliseconds", json!(r.duration_ms)),
            ("RefreshFailed", "Count", json!(u8::from(r.failed))),
            (
                "IncrementalRefresh",
                "Count",
                json!(u8::from(r.incremental)),
            ),
            ("NewIdentities", "Count", json!(r.new_identities)),
        ],
    )
}

/// The records of one sweep: its totals, then one `Findings` value per code
/// (dimension set exactly `["Finding"]`, zeros included so an alarm can clear).
pub fn sweep_records(namespace: &str, at: DateTime<Utc>, s: &Sweep) -> Vec<Value> {
    let mut records = vec![record(
        namespace,
        at,
        &[&[]],
        &[],
        &[
            ("RunningExperiments", "Count", json!(s.running_experiments)),
            ("SweepSkipped", "Count", json!(s.skipped)),
            (
                "MaxSnapshotAgeSeconds",
                "Seconds",
                json!(s.max_snapshot_age_seconds),
            ),
        ],
    )];
    for code in Code::ALL {
        records.push(record(
            namespace,
            at,
            &[&["Finding"]],
            &[("Finding", code.as_str().to_owned())],
            &[(
                "Findings",
                "Count",
                json!(s.findings.get(&code).copied().unwrap_or(0)),
            )],
        ));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 2, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_refresh_record_carries_both_dimension_sets_and_every_value() {
        let r = Refresh {
            experiment_id: 42,
            duration_ms: 17,
            failed: false,
            incremental: true,
            new_identities: -3,
        };
        assert_eq!(
            refresh_record("Exposures", true, at(), &r),
            json!({
                "_aws": {"Timestamp": 1_780_358_400_000_i64, "CloudWatchMetrics": [{
                    "Namespace": "Exposures",
                    "Dimensions": [[], ["ExperimentId"]],
                    "Metrics": [
                        {"Name": "RefreshDuration", "Unit": "Milliseconds"},
                        {"Name": "RefreshFailed", "Unit": "Count"},
                        {"Name": "IncrementalRefresh", "Unit": "Count"},
                        {"Name": "NewIdentities", "Unit": "Count"}
                    ]
                }]},
                "ExperimentId": "42",
                "RefreshDuration": 17, "RefreshFailed": 0, "IncrementalRefresh": 1, "NewIdentities": -3
            })
        );
        let aggregate = refresh_record("X", false, at(), &r);
        assert_eq!(
            aggregate["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
    }

    #[test]
    fn a_sweep_reports_every_finding_code_even_at_zero() {
        let s = Sweep {
            running_experiments: 3,
            skipped: 1,
            max_snapshot_age_seconds: 900,
            findings: [(Code::Srm, 2)].into_iter().collect(),
        };
        let records = sweep_records("Exposures", at(), &s);
        assert_eq!(records.len(), 1 + Code::ALL.len());
        assert_eq!(records[0]["RunningExperiments"], 3);
        assert_eq!(records[0]["MaxSnapshotAgeSeconds"], 900);
        let findings: BTreeMap<String, u64> = records[1..]
            .iter()
            .map(|r| {
                assert_eq!(
                    r["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                    json!([["Finding"]])
                );
                (
                    r["Finding"].as_str().unwrap().to_owned(),
                    r["Findings"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(findings["srm"], 2);
        assert_eq!(findings["stale"], 0);
        assert_eq!(findings.len(), 7);
    }

    #[test]
    fn records_go_to_the_sink_one_line_each() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let captured = Arc::clone(&lines);
        let config = Config::from_lookup(|_| None).unwrap();
        let metrics = Metrics::new(&config).with_sink(Arc::new(move |l: &str| {
            captured.lock().unwrap().push(l.to_owned())
        }));
        metrics.sweep(
            at(),
            &Sweep {
                running_experiments: 0,
                skipped: 0,
                max_snapshot_age_seconds: 0,
                findings: BTreeMap::new(),
            },
        );
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 8);
        assert!(lines
            .iter()
            .all(|l| !l.contains('\n') && l.starts_with('{')));
    }
}
