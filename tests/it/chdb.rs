//! The function's exact query on the current ClickHouse engine (chDB), against
//! the reference DDL (`DateTime64(3)`, `LowCardinality`, codecs, bloom filter).

use std::io::Write;
use std::process::{Command, Stdio};

use exposures::summary::Payload;
use exposures::warehouse::{self, BucketRow, Target, TimestampKind, Warehouse};
use exposures::window::Window;
use exposures::Config;
use serde_json::{json, Value};

use crate::helpers::{exposure, insert_sql, ts};
use crate::scenarios::{self, Scenario};

pub const REFERENCE_DDL: &str = include_str!("../../migrations/clickhouse/events.sql");

struct Job {
    name: String,
    session_timezone: &'static str,
    ddl: String,
    scenario: Scenario,
}

fn run_jobs(jobs: &[Job]) -> Value {
    let warehouse = Warehouse::new(&Config::from_lookup(|_| None).unwrap()).unwrap();
    let client = clickhouse::Client::default();
    let payload = json!({"jobs": jobs.iter().map(|job| {
        let s = &job.scenario;
        let window = Window::new(ts(s.started_at), s.ended_at.map(ts), ts(s.now));
        let target = Target { environment_key: s.environment_key, feature_name: s.feature_name };
        let query = warehouse.exposures_query(TimestampKind::DateTime64, target, &window);
        let mut setup = vec![job.ddl.clone()];
        if !s.events.is_empty() {
            setup.push(insert_sql(&client, "events", &s.events, true));
        }
        json!({"name": job.name, "session_timezone": job.session_timezone, "setup": setup,
               "query": query.sql_display().to_string()})
    }).collect::<Vec<_>>()});

    run_chdb(payload)
}

/// Runs `{"jobs": [...]}` through scripts/chdb_run.py; returns its `results`.
pub fn run_chdb(payload: Value) -> Value {
    let python = std::env::var("EXPOSURES_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chdb_run.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chdb_run.py failed (pip install chdb-core?)"
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("chdb_run.py prints JSON");
    assert_eq!(answer["errors"], json!({}), "chDB rejected a query");
    answer["results"].clone()
}

fn payload_of(job: &Job, rows: &Value) -> Value {
    let s = &job.scenario;
    let window = Window::new(ts(s.started_at), s.ended_at.map(ts), ts(s.now));
    let rows: Vec<BucketRow> =
        serde_json::from_value(rows.clone()).expect("rows of the exposures query");
    let counts = warehouse::counts(rows).expect("every variant named");
    serde_json::to_value(Payload::build(window.granularity, counts)).unwrap()
}

#[test]
fn every_scenario_gives_the_same_payload_on_the_current_engine() {
    let mut jobs = Vec::new();
    for (zone, column) in [
        ("America/New_York", "DateTime64(3, 'UTC')"),
        ("UTC", "DateTime64(3, 'Asia/Kolkata')"),
    ] {
        for scenario in scenarios::all() {
            jobs.push(Job {
                name: format!("{} [{zone}, {column}]", scenario.name),
                session_timezone: zone,
                ddl: REFERENCE_DDL.replace("DateTime64(3, 'UTC')", column),
                scenario,
            });
        }
    }
    let results = run_jobs(&jobs);
    for job in &jobs {
        assert_eq!(
            payload_of(job, &results[&job.name]),
            job.scenario.expected,
            "{}",
            job.name
        );
    }
}

#[test]
fn millisecond_bounds_on_datetime64() {
    let scenario = Scenario {
        name: "millisecond_bounds",
        environment_key: "prod",
        feature_name: "checkout",
        started_at: "2026-06-01T10:00:00.250Z",
        ended_at: Some("2026-06-01T12:00:00.750Z"),
        now: "2026-07-01T00:00:00Z",
        events: vec![
            exposure("before_start", "control", "2026-06-01T10:00:00.249Z"),
            exposure("at_start", "control", "2026-06-01T10:00:00.250Z"),
            exposure("before_end", "variant_a", "2026-06-01T12:00:00.749Z"),
            exposure("at_end", "variant_a", "2026-06-01T12:00:00.750Z"),
            // Quarantine looks at the window only: the other value is 1 ms outside.
            exposure("at_start", "variant_a", "2026-06-01T10:00:00.249Z"),
        ],
        expected: json!({"excluded_identities": 0, "timeseries": {"granularity": "hour", "points": [
            {"bucket": "2026-06-01T10:00:00Z", "new_identities": {"control": 1}},
            {"bucket": "2026-06-01T12:00:00Z", "new_identities": {"variant_a": 1}}
        ]}}),
    };
    let jobs = [Job {
        name: "millisecond_bounds".into(),
        session_timezone: "Asia/Kolkata",
        ddl: REFERENCE_DDL.into(),
        scenario,
    }];
    let results = run_jobs(&jobs);
    assert_eq!(
        payload_of(&jobs[0], &results["millisecond_bounds"]),
        jobs[0].scenario.expected
    );
}
