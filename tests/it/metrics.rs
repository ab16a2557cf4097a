//! CloudWatch metrics (SPEC 7b) against the real servers: every record is
//! checked against the Embedded Metric Format specification, and its values
//! against what the refresh or the sweep did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use exposures::App;
use serde_json::{json, Value};

use crate::api::{call, v2};
use crate::helpers::{exposure, ts, Ev, TestEnv};

/// CloudWatch's unit names (`MetricDatum.Unit`), the only ones EMF accepts.
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// One EMF record, checked against the specification
/// (docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
#[derive(Debug, Clone)]
pub struct Record {
    /// `_aws.Timestamp`, milliseconds since the epoch.
    pub timestamp: i64,
    pub namespace: String,
    /// The dimension sets, as written.
    pub dimensions: Vec<Vec<String>>,
    /// Metric name to (unit, value).
    pub metrics: BTreeMap<String, (String, f64)>,
    /// The whole object.
    pub json: Value,
}

impl Record {
    /// A metric's value.
    pub fn get(&self, name: &str) -> f64 {
        self.metrics
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name} in {}", self.json))
            .1
    }

    /// A top-level string member (a dimension value).
    pub fn text(&self, name: &str) -> &str {
        self.json[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name} in {}", self.json))
    }
}

/// Parses one line of standard output as an EMF record, panicking with the
/// line on any departure from the specification.
pub fn check_emf(line: &str) -> Record {
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("EMF line is not one JSON value ({e}): {line}"));
    let root = json
        .as_object()
        .unwrap_or_else(|| panic!("EMF root is not an object: {line}"));
    let aws = root["_aws"]
        .as_object()
        .unwrap_or_else(|| panic!("_aws is not an object: {line}"));
    let timestamp = aws
        .get("Timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .unwrap_or_else(|| panic!("_aws.Timestamp is not an integer of milliseconds: {line}"));
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| panic!("_aws.CloudWatchMetrics is not a non-empty array: {line}"));
    assert!(
        aws.keys()
            .all(|k| k == "Timestamp" || k == "CloudWatchMetrics"),
        "_aws has members the specification does not define: {line}"
    );
    assert_eq!(directives.len(), 1, "one directive per record: {line}");
    let directive = directives[0]
        .as_object()
        .unwrap_or_else(|| panic!("a MetricDirective is not an object: {line}"));
    assert!(
        directive
            .keys()
            .all(|k| ["Namespace", "Dimensions", "Metrics"].contains(&k.as_str())),
        "MetricDirective has members the specification does not define: {line}"
    );
    let namespace = directive["Namespace"]
        .as_str()
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .unwrap_or_else(|| panic!("Namespace is not a string of 1 to 255 characters: {line}"))
        .to_owned();
    let dimensions: Vec<Vec<String>> = directive["Dimensions"]
        .as_array()
        .unwrap_or_else(|| panic!("Dimensions is not an array: {line}"))
        .iter()
        .map(|set| {
            let set = set
                .as_array()
                .unwrap_or_else(|| panic!("a DimensionSet is not an array: {line}"));
            assert!(set.len() <= 30, "a DimensionSet has over 30 keys: {line}");
            set.iter()
                .map(|key| {
                    let key = key
                        .as_str()
                        .unwrap_or_else(|| panic!("a dimension key is not a string: {line}"));
                    assert!(
                        root.get(key).is_some_and(Value::is_string),
                        "dimension {key} is not a top-level string member: {line}"
                    );
                    key.to_owned()
                })
                .collect()
        })
        .collect();
    let definitions = directive["Metrics"]
        .as_array()
        .filter(|m| !m.is_empty() && m.len() <= 100)
        .unwrap_or_else(|| panic!("Metrics is not an array of 1 to 100 definitions: {line}"));
    let mut metrics = BTreeMap::new();
    for definition in definitions {
        let name = definition["Name"]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= 255)
            .unwrap_or_else(|| panic!("a metric Name is not a string: {line}"));
        let unit = definition["Unit"]
            .as_str()
            .unwrap_or_else(|| panic!("metric {name} has no Unit: {line}"));
        assert!(
            UNITS.contains(&unit),
            "metric {name}: {unit} is not a CloudWatch unit: {line}"
        );
        let value = root
            .get(name)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("metric {name} has no number at the top level: {line}"));
        assert!(
            metrics
                .insert(name.to_owned(), (unit.to_owned(), value))
                .is_none(),
            "metric {name} defined twice: {line}"
        );
    }
    Record {
        timestamp,
        namespace,
        dimensions,
        metrics,
        json,
    }
}

/// The records an app writes, in order.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    /// `app` writing its metrics here instead of to standard output.
    pub fn attach(&self, app: App) -> App {
        let lines = Arc::clone(&self.0);
        app.with_metrics_sink(Arc::new(move |line: &str| {
            lines.lock().unwrap().push(line.to_owned())
        }))
    }

    /// The records written since the last call, each checked against the specification.
    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .iter()
            .map(|line| {
                assert!(!line.contains('\n'), "one record per line: {line}");
                check_emf(line)
            })
            .collect()
    }
}

fn dims(sets: &[&[&str]]) -> Vec<Vec<String>> {
    sets.iter()
        .map(|set| set.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

/// Checks a refresh record: (RefreshFailed, IncrementalRefresh, NewIdentities).
fn assert_refresh(r: &Record, id: i64, at: DateTime<Utc>, expected: (f64, f64, f64)) {
    assert_eq!(r.namespace, "Exposures", "{}", r.json);
    assert_eq!(r.timestamp, at.timestamp_millis(), "{}", r.json);
    assert_eq!(r.dimensions, dims(&[&[], &["ExperimentId"]]), "{}", r.json);
    assert_eq!(r.text("ExperimentId"), id.to_string());
    let units: Vec<(&str, &str)> = r
        .metrics
        .iter()
        .map(|(name, (unit, _))| (name.as_str(), unit.as_str()))
        .collect();
    assert_eq!(
        units,
        [
            ("IncrementalRefresh", "Count"),
            ("NewIdentities", "Count"),
            ("RefreshDuration", "Milliseconds"),
            ("RefreshFailed", "Count"),
        ]
    );
    let duration = r.get("RefreshDuration");
    assert!(duration >= 0.0 && duration.fract() == 0.0, "{}", r.json);
    assert_eq!(
        (
            r.get("RefreshFailed"),
            r.get("IncrementalRefresh"),
            r.get("NewIdentities")
        ),
        expected,
        "{}",
        r.json
    );
}

/// Identities counted in an answer's payload.
fn counted(answer: &Value) -> f64 {
    exposures::summary::identities_in(&answer["exposures"]["payload"]) as f64
}

#[tokio::test]
async fn a_record_for_every_refresh_that_ran_with_what_it_did() {
    // The default 300 s between accepted API refreshes.
    let env = TestEnv::new().await;
    let emf = Captured::default();
    let app = emf.attach(env.another_app(&[]));
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let mut events: Vec<Ev> = (0..3)
        .map(|i| exposure(&format!("c{i}"), "control", "2026-06-01T10:00:00Z"))
        .collect();
    events.extend((0..2).map(|i| exposure(&format!("a{i}"), "variant_a", "2026-06-01T10:00:00Z")));
    env.insert(&events).await;

    // A first refresh: full, every identity is new.
    let t1 = ts("2026-06-02T00:00:00Z");
    env.set_now(t1);
    let (payload, _, mode) = crate::incremental::refresh(&app, id).await;
    assert_eq!(mode.as_str(), "full");
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_refresh(&records[0], id, t1, (0.0, 0.0, 5.0));
    assert_eq!(exposures::summary::identities_in(&payload), 5, "{payload}");

    // Incremental: one new identity, three counted ones show the other variant
    // and move to excluded_identities: 1 - 3 = -2.
    env.insert(&[
        exposure("n0", "variant_a", "2026-06-02T00:30:00Z"),
        exposure("c0", "variant_a", "2026-06-02T00:30:00Z"),
        exposure("c1", "variant_a", "2026-06-02T00:30:00Z"),
        exposure("c2", "variant_a", "2026-06-02T00:30:00Z"),
    ])
    .await;
    let t2 = ts("2026-06-02T01:00:00Z");
    env.set_now(t2);
    let (payload, _, mode) = crate::incremental::refresh(&app, id).await;
    assert_eq!(mode.as_str(), "incremental");
    assert_eq!(payload["excluded_identities"], 3, "{payload}");
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_refresh(&records[0], id, t2, (0.0, 1.0, -2.0));

    // Through the handler: a direct refresh with nothing new.
    let t3 = ts("2026-06-02T01:10:00Z");
    env.set_now(t3);
    let before = counted(&serde_json::to_value(app.snapshot(id).await.unwrap()).unwrap());
    let answer = exposures::handler::handle(&app, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_eq!(counted(&answer) - before, 0.0);
    assert_eq!(records[0].get("NewIdentities"), 0.0);
    assert_eq!(records[0].get("RefreshFailed"), 0.0);

    // A failed refresh: RefreshFailed 1, nothing new, not incremental.
    let broken = emf.attach(env.app_without_clickhouse());
    let t4 = ts("2026-06-02T01:20:00Z");
    env.set_now(t4);
    broken
        .refresh(id, None)
        .await
        .expect_err("ClickHouse unreachable");
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_refresh(&records[0], id, t4, (1.0, 0.0, 0.0));

    // An API refresh reports; the throttled one after it, reads, not-started
    // and final answers do not.
    let refresh = format!("/experiments/{id}/exposures/refresh");
    let posted = call(&app, v2("POST", &refresh, None)).await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_refresh(&records[0], id, t4, (0.0, 1.0, 0.0));
    let throttled = call(&app, v2("POST", &refresh, None)).await;
    assert_eq!(throttled.status, 429);
    call(
        &app,
        v2("GET", &format!("/experiments/{id}/exposures"), None),
    )
    .await;
    let created = env.experiment(None, None).await;
    let answer = exposures::handler::handle(&app, json!({"experiment_id": created}), None)
        .await
        .unwrap();
    assert_eq!(answer["outcome"], "not_started");
    let ended = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-01T12:00:00Z"))
        .await;
    let first = exposures::handler::handle(&app, json!({"experiment_id": ended}), None)
        .await
        .unwrap();
    assert_eq!(first["outcome"], "refreshed");
    let records = emf.take();
    assert_eq!(records.len(), 1, "only the refresh that made it final");
    assert_refresh(&records[0], ended, t4, (0.0, 0.0, 5.0));
    let again = exposures::handler::handle(&app, json!({"experiment_id": ended}), None)
        .await
        .unwrap();
    assert_eq!(again["outcome"], "final");
    assert!(emf.take().is_empty());

    // Without the per-experiment dimension, in another namespace.
    let aggregate = emf.attach(env.another_app(&[
        ("EXPOSURES_METRICS_PER_EXPERIMENT", "false"),
        ("EXPOSURES_METRICS_NAMESPACE", "Team/Exposures"),
    ]));
    exposures::handler::handle(&aggregate, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    let records = emf.take();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].namespace, "Team/Exposures");
    assert_eq!(records[0].dimensions, dims(&[&[]]));
    assert_eq!(records[0].get("RefreshFailed"), 0.0);
}

/// The sweep's own records: totals, then `Findings` per code.
struct SweepRecords {
    running: f64,
    skipped: f64,
    max_age: f64,
    findings: BTreeMap<String, f64>,
}

/// Splits a sweep's records from the refresh records before them.
fn sweep_records(records: &[Record], at: DateTime<Utc>) -> (Vec<Record>, SweepRecords) {
    let first = records
        .iter()
        .position(|r| r.metrics.contains_key("RunningExperiments"))
        .expect("the sweep's record");
    let (refreshes, sweep) = records.split_at(first);
    assert_eq!(sweep.len(), 8, "totals and 7 finding codes");
    for r in sweep {
        assert_eq!(r.timestamp, at.timestamp_millis(), "{}", r.json);
        assert_eq!(r.namespace, "Exposures");
    }
    let totals = &sweep[0];
    assert_eq!(totals.dimensions, dims(&[&[]]));
    assert_eq!(
        totals
            .metrics
            .iter()
            .map(|(n, (u, _))| (n.as_str(), u.as_str()))
            .collect::<Vec<_>>(),
        [
            ("MaxSnapshotAgeSeconds", "Seconds"),
            ("RunningExperiments", "Count"),
            ("SweepSkipped", "Count"),
        ]
    );
    let findings = sweep[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.dimensions, dims(&[&["Finding"]]), "{}", r.json);
            assert_eq!(r.metrics.len(), 1, "{}", r.json);
            assert_eq!(r.metrics["Findings"].0, "Count");
            (r.text("Finding").to_owned(), r.get("Findings"))
        })
        .collect();
    (
        refreshes.to_vec(),
        SweepRecords {
            running: totals.get("RunningExperiments"),
            skipped: totals.get("SweepSkipped"),
            max_age: totals.get("MaxSnapshotAgeSeconds"),
            findings,
        },
    )
}

fn findings(counts: &[(&str, f64)]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, f64> = [
        "multiple_exposure",
        "no_exposures",
        "refresh_failing",
        "srm",
        "stale",
        "stalled",
        "unexpected_variants",
    ]
    .into_iter()
    .map(|code| (code.to_owned(), 0.0))
    .collect();
    for (code, n) in counts {
        all.insert((*code).to_owned(), *n);
    }
    all
}

/// Runs the sweep through the handler, as the schedule would.
async fn run_sweep(app: &App, deadline: Option<DateTime<Utc>>) -> Value {
    exposures::handler::handle(app, json!({"action": "refresh_due"}), deadline)
        .await
        .expect("the sweep runs")
}

fn sorted(mut ids: Vec<i64>) -> Value {
    ids.sort_unstable();
    json!(ids)
}

#[tokio::test]
async fn every_sweep_reports_running_experiments_snapshot_age_and_findings() {
    let env = TestEnv::new().await;
    let emf = Captured::default();
    let app = emf.attach(env.another_app(&[]));
    // Skewed 80/20 under 50/50 weights, one identity on a variant outside the
    // weights, and 20 identities on both arms (2%): srm, unexpected_variants,
    // multiple_exposure.
    let skewed = env
        .experiment_for("prod", "skewed", Some("2026-06-01T00:00:00Z"), None)
        .await;
    env.pg
        .execute(
            "UPDATE experiments SET variant_weights = '{\"control\": 1, \"variant_a\": 1}' WHERE id = $1",
            &[&skewed],
        )
        .await
        .unwrap();
    env.clickhouse
        .query(
            "INSERT INTO events SELECT 'prod', '$flag_exposure', 'skewed', concat('s', toString(number)),
                    if(number % 5 = 0, 'variant_a', 'control'),
                    toDateTime(1780963200 + number * 7) FROM numbers(1000)",
        )
        .execute()
        .await
        .unwrap();
    let mut extra = vec![Ev {
        feature_name: "skewed".into(),
        ..exposure("z0", "zz", "2026-06-09T10:00:00Z")
    }];
    for i in 0..20 {
        for variant in ["control", "variant_a"] {
            extra.push(Ev {
                feature_name: "skewed".into(),
                ..exposure(&format!("b{i}"), variant, "2026-06-09T11:00:00Z")
            });
        }
    }
    env.insert(&extra).await;
    // Running two days with nobody counted: no_exposures.
    let silent = env
        .experiment_for("prod", "silent", Some("2026-06-08T00:00:00Z"), None)
        .await;
    // Exposures on 2026-06-02 only: stalled.
    let faded = env
        .experiment_for("prod", "faded", Some("2026-06-01T00:00:00Z"), None)
        .await;
    env.insert(
        &(0..5)
            .map(|i| Ev {
                feature_name: "faded".into(),
                ..exposure(&format!("f{i}"), "control", "2026-06-02T10:00:00Z")
            })
            .collect::<Vec<_>>(),
    )
    .await;
    // Refreshed by the sweep but not running: neither counted nor a finding.
    let paused = env
        .experiment_for("prod", "paused", Some("2026-06-01T00:00:00Z"), None)
        .await;
    crate::sweep::set_status(&env, paused, "paused").await;
    let completed = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-05T00:00:00Z"))
        .await;
    env.experiment(None, None).await;

    // What the data show, whatever the refreshes do from here on.
    let data_findings = [
        ("srm", 1.0),
        ("unexpected_variants", 1.0),
        ("multiple_exposure", 1.0),
        ("no_exposures", 1.0),
        ("stalled", 1.0),
    ];

    // 1. A good sweep: every snapshot is as of now.
    let t1 = ts("2026-06-09T22:00:00Z");
    env.set_now(t1);
    let report = run_sweep(&app, None).await;
    let refreshed = sorted(vec![skewed, silent, faded, paused, completed]);
    assert_eq!(report["refreshed"], refreshed, "{report}");
    let (refreshes, sweep) = sweep_records(&emf.take(), t1);
    assert_eq!(refreshes.len(), 5);
    let new: BTreeMap<String, f64> = refreshes
        .iter()
        .map(|r| {
            assert_eq!(
                (r.get("RefreshFailed"), r.get("IncrementalRefresh")),
                (0.0, 0.0),
                "{}",
                r.json
            );
            (r.text("ExperimentId").to_owned(), r.get("NewIdentities"))
        })
        .collect();
    // 1000 identities and z0; the 20 on both arms are in no point.
    assert_eq!(new[&skewed.to_string()], 1001.0);
    assert_eq!(new[&faded.to_string()], 5.0);
    assert_eq!(new[&silent.to_string()], 0.0);
    assert_eq!(
        (sweep.running, sweep.skipped, sweep.max_age),
        (3.0, 0.0, 0.0)
    );
    assert_eq!(sweep.findings, findings(&data_findings));
    // What the sweep counted is what a reader sees.
    let read = call(
        &app,
        v2("GET", &format!("/experiments/{skewed}/exposures"), None),
    )
    .await;
    let codes: Vec<&str> = read.body["exposures"]["health"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["srm", "unexpected_variants", "multiple_exposure"]);

    // A running experiment that has never been stored: its age counts from started_at.
    let newcomer = env
        .experiment_for("prod", "newcomer", Some("2026-06-09T21:00:00Z"), None)
        .await;

    // 2. Two hours later ClickHouse is gone: every refresh fails, every
    // running snapshot is 7200 s old, and the newcomer 3 h.
    let t2 = t1 + TimeDelta::hours(2);
    env.set_now(t2);
    let broken = emf.attach(env.app_without_clickhouse());
    let report = run_sweep(&broken, None).await;
    let failed = sorted(vec![skewed, silent, faded, paused, newcomer]);
    assert_eq!(report["failed"], failed, "{report}");
    let (refreshes, sweep) = sweep_records(&emf.take(), t2);
    assert_eq!(refreshes.len(), 5);
    for r in &refreshes {
        assert_eq!(
            (
                r.get("RefreshFailed"),
                r.get("IncrementalRefresh"),
                r.get("NewIdentities")
            ),
            (1.0, 0.0, 0.0),
            "{}",
            r.json
        );
    }
    assert_eq!((sweep.running, sweep.skipped), (4.0, 0.0));
    assert_eq!(sweep.max_age, 3.0 * 3600.0, "the newcomer, from started_at");
    // The newcomer has no payload, so no health and no finding.
    let stale_and_failing = findings(
        &[
            &data_findings[..],
            &[("refresh_failing", 3.0), ("stale", 3.0)],
        ]
        .concat(),
    );
    assert_eq!(sweep.findings, stale_and_failing);

    // 3. Too little time left to start any refresh: all skipped, no refresh record.
    let deadline = t2 + TimeDelta::seconds(10);
    let report = run_sweep(&app, Some(deadline)).await;
    assert_eq!(report["skipped"], failed, "{report}");
    let (refreshes, sweep) = sweep_records(&emf.take(), t2);
    assert!(refreshes.is_empty());
    assert_eq!(
        (sweep.running, sweep.skipped, sweep.max_age),
        (4.0, 5.0, 10800.0)
    );
    assert_eq!(sweep.findings, stale_and_failing);

    // 4. ClickHouse back: the failures and the staleness clear, to 0.
    let report = run_sweep(&app, None).await;
    assert_eq!(report["refreshed"], failed, "{report}");
    let (refreshes, sweep) = sweep_records(&emf.take(), t2);
    assert_eq!(refreshes.len(), 5);
    assert_eq!(
        (sweep.running, sweep.skipped, sweep.max_age),
        (4.0, 0.0, 0.0)
    );
    assert_eq!(
        sweep.findings,
        // The newcomer has run 3 h with nobody counted: not yet no_exposures.
        findings(&data_findings)
    );
}
