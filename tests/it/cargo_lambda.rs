//! Every sample payload in `events/` through the real Lambda runtime path:
//! `cargo lambda watch` (the runtime emulator running the function binary)
//! and `cargo lambda invoke`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{exposure, TestEnv};

/// What invoking one sample must give.
enum Expect {
    /// Success; the check inspects the answer.
    Ok(fn(&Value)),
    /// Failure with this `errorType`.
    Err(&'static str),
}

fn expectation(file: &str) -> Option<Expect> {
    /// The snapshot object of a refresh, from a direct answer or an API body.
    fn refreshed(v: &Value) {
        if let Some(outcome) = v.get("outcome") {
            assert!(outcome == "refreshed" || outcome == "final", "{v}");
        }
        assert_eq!(v["experiment_id"], 42, "{v}");
        assert_eq!(v["exposures"]["payload"]["excluded_identities"], 1, "{v}");
        let points = &v["exposures"]["payload"]["timeseries"]["points"];
        assert_eq!(points[0]["new_identities"]["control"], 2, "{v}");
        // Health, computed by the function binary: variant_a is an arm never
        // observed (its one identity is quarantined), and 2 identities are too
        // few for the chi-squared test but not for the sequential one: with
        // prior concentration 10000 at 50/50, BF = 5000·5001 / (10000·10001·0.5²).
        let sequential_p = 10000.0 * 10001.0 * 0.25 / (5000.0 * 5001.0);
        let health = &v["exposures"]["health"];
        let p_value = health["sample_ratio"]["sequential"]["p_value"]
            .as_f64()
            .unwrap();
        assert!((p_value / sequential_p - 1.0).abs() < 1e-12, "{v}");
        assert_eq!(
            health,
            &serde_json::json!({
                "sample_ratio": {
                    "status": "skipped", "reason": "too_few_identities",
                    "observed": {"control": 2, "variant_a": 0},
                    "expected": null, "chi_squared": null, "degrees_of_freedom": null,
                    "p_value": null, "unexpected_variants": [],
                    "sequential": {"status": "ok", "p_value": p_value, "onset_bucket": null}
                },
                "multiple_exposure": {"excluded_identities": 1, "share": 1.0 / 3.0, "warning": false},
                "findings": []
            }),
            "{v}"
        );
    }
    Some(match file {
        "refresh.json"
        | "refresh-action.json"
        | "eventbridge-rule-refresh.json"
        | "scheduler-refresh.json" => Expect::Ok(refreshed),
        "migrate.json" => Expect::Ok(|v| assert_eq!(v["migrated"], serde_json::json!([]), "{v}")),
        "refresh-unknown-experiment.json" => Expect::Err("not_found"),
        "refresh-due.json" | "eventbridge-rule-sweep.json" | "scheduler-sweep.json" => {
            Expect::Ok(|v| {
                assert_eq!(
                    v,
                    &serde_json::json!({"refreshed": [42], "failed": [], "skipped": []})
                )
            })
        }
        "api-v1-get-exposures.json"
        | "api-v2-get-exposures.json"
        | "api-v2-stage-prefix-get.json" => Expect::Ok(|v| refreshed(&api_body(v, 200))),
        "api-v1-refresh.json" | "api-v2-refresh.json" => Expect::Ok(|v| {
            let body = api_body(v, 200);
            assert!(
                body["exposures"]["refresh_requested_at"].is_string(),
                "{body}"
            );
            refreshed(&body)
        }),
        "api-v1-proxy-bad-id.json" => {
            Expect::Ok(|v| assert_eq!(api_body(v, 400)["error"], "bad_request"))
        }
        "api-v2-method-not-allowed.json" => Expect::Ok(|v| {
            assert_eq!(api_body(v, 405)["error"], "method_not_allowed");
            assert_eq!(v["headers"]["allow"], "GET");
        }),
        "refresh-malformed.json" => Expect::Err("bad_request"),
        _ => return None,
    })
}

/// Checks a proxy response and returns its parsed body.
fn api_body(v: &Value, status: u64) -> Value {
    assert_eq!(v["statusCode"], status, "{v}");
    assert_eq!(v["headers"]["content-type"], "application/json", "{v}");
    serde_json::from_str(v["body"].as_str().expect("string body")).expect("JSON body")
}

struct Watch {
    child: Child,
    port: u16,
    /// Where the emulator and the function write their standard output.
    stdout: PathBuf,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The emulator runs the function as a child process: stop the whole group.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn log_file(root: &Path, name: &str) -> (std::fs::File, PathBuf) {
    let dir = root.join("target/cargo-lambda");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    (std::fs::File::create(&path).unwrap(), path)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cargo lambda watch` on a free port with the test's settings plus `extra`;
/// its output goes to `target/cargo-lambda/<name>.log` and `<name>.err.log`.
fn start_watch(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> Watch {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("cargo");
    command
        .args([
            "lambda",
            "watch",
            // The emulator's invocation deadline; the sweep plans around it.
            "--timeout",
            "60",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .current_dir(root)
        // The tests' own target dir, so the dependencies built for the tests are reused.
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("RUST_LOG", "info")
        // Several samples refresh experiment 42 in a row.
        .env("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "0")
        .stdin(Stdio::null())
        .process_group(0);
    // The function's logs and metrics, for the tests and for a look after a failure.
    let (stdout, stdout_path) = log_file(root, &format!("{name}.log"));
    let (stderr, _) = log_file(root, &format!("{name}.err.log"));
    command.stdout(stdout).stderr(stderr);
    for (key, value) in &env.settings {
        command.env(key, value);
    }
    for (key, value) in extra {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .expect("cargo lambda is installed (pip install cargo-lambda)");
    let watch = Watch {
        child,
        port,
        stdout: stdout_path,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    watch
}

/// Runs `cargo lambda invoke`; Ok(answer) or Err(stderr).
pub fn invoke(port: u16, file: &Path) -> Result<Value, String> {
    let out = Command::new("cargo")
        .args([
            "lambda",
            "invoke",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .arg("--data-file")
        .arg(file)
        .args(["--output-format", "json"])
        .stdin(Stdio::null())
        .output()
        .expect("run cargo lambda invoke");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                file.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        }))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn event_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_event_through_cargo_lambda() {
    let env = TestEnv::new().await;
    env.pg
        .execute(
            "INSERT INTO experiments (id, environment_key, feature_name, status, started_at, variant_weights)
             VALUES (42, 'prod', 'checkout', 'running', now() - interval '1 hour',
                     '{\"control\": 50, \"variant_a\": 50}')",
            &[],
        )
        .await
        .unwrap();
    let recent = (chrono::Utc::now() - chrono::TimeDelta::minutes(10))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let events = vec![
        exposure("u1", "control", &recent),
        exposure("u2", "control", &recent),
        exposure("u3", "control", &recent),
        exposure("u3", "variant_a", &recent),
    ];
    env.insert(&events).await;
    // Samples run in name order, and the API's GET samples read what a refresh stored.
    env.invoke(serde_json::json!({"experiment_id": 42}))
        .await
        .unwrap();

    let watch = start_watch(&env, "watch", &[]);
    let files = event_files();
    assert!(files.len() >= 7, "events/ has the samples");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expect = expectation(&name)
            .unwrap_or_else(|| panic!("events/{name} has no expectation in this test"));
        let port = watch.port;
        let path = file.clone();
        let result = tokio::task::spawn_blocking(move || invoke(port, &path))
            .await
            .unwrap();
        match (expect, result) {
            (Expect::Ok(check), Ok(answer)) => {
                if answer.get("statusCode").is_some() {
                    let request = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                        .expect("events/ files are JSON");
                    crate::openapi::check(&request, &answer);
                }
                check(&answer)
            }
            (Expect::Err(code), Err(stderr)) => {
                assert!(
                    stderr.contains(&format!("Error: {code}")),
                    "events/{name}: {stderr}"
                )
            }
            (Expect::Ok(_), Err(stderr)) => panic!("events/{name} failed: {stderr}"),
            (Expect::Err(code), Ok(answer)) => {
                panic!("events/{name} should fail with {code}, got {answer}")
            }
        }
    }
}

/// Runs `cargo lambda invoke` with `event` (written to a file) off the async runtime.
async fn invoke_json(watch: &Watch, name: &str, event: Value) -> Result<Value, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cargo-lambda");
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, event.to_string()).unwrap();
    let port = watch.port;
    tokio::task::spawn_blocking(move || invoke(port, &file))
        .await
        .unwrap()
}

/// What one line of the function's standard output was.
enum Line {
    /// An EMF record.
    Metrics(crate::metrics::Record),
    /// A JSON log event (`AWS_LAMBDA_LOG_FORMAT=JSON`): its `fields`.
    Log(Value),
}

/// The function's JSON lines in `text`, in order. Every line that holds
/// `_aws` must be an EMF record on its own (never nested in a log record),
/// and every JSON line of the function must be an EMF record or a log event.
fn function_lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(|line| {
            if !line.starts_with('{') {
                // The emulator's own logs and cargo's messages.
                assert!(
                    !line.contains("_aws"),
                    "metrics inside another line: {line}"
                );
                return None;
            }
            let json: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a line of the function is not JSON ({e}): {line}"));
            if json.get("_aws").is_some() {
                return Some(Line::Metrics(crate::metrics::check_emf(line)));
            }
            assert!(
                !line.contains("_aws"),
                "metrics nested in a log record: {line}"
            );
            assert!(
                json["level"].is_string(),
                "a JSON log line without a level: {line}"
            );
            Some(Line::Log(json["fields"].clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_lines_through_cargo_lambda_follow_the_emf_specification() {
    let env = TestEnv::new().await;
    let id = 7_i64;
    env.pg
        .execute(
            "INSERT INTO experiments (id, environment_key, feature_name, status, started_at, variant_weights)
             VALUES ($1, 'prod', 'checkout', 'running', now() - interval '2 hours',
                     '{\"control\": 50, \"variant_a\": 50}')",
            &[&id],
        )
        .await
        .unwrap();
    let at = |minutes: i64| {
        (chrono::Utc::now() - chrono::TimeDelta::minutes(minutes))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    env.insert(&[
        exposure("u0", "control", &at(30)),
        exposure("u1", "control", &at(30)),
        exposure("u2", "control", &at(30)),
        exposure("u3", "variant_a", &at(30)),
    ])
    .await;

    // As the template runs it: JSON logs (AWS_LAMBDA_LOG_FORMAT is what
    // Lambda sets for LogFormat: JSON), in a namespace of its own.
    let watch = start_watch(
        &env,
        "metrics",
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("EXPOSURES_METRICS_NAMESPACE", "Exposures/IT"),
        ],
    );
    let began = chrono::Utc::now();
    let refresh = serde_json::json!({"experiment_id": id});
    let sweep = serde_json::json!({"action": "refresh_due"});

    // 1. First refresh: 4 identities.
    let first = invoke_json(&watch, "metrics-refresh", refresh.clone())
        .await
        .unwrap();
    assert_eq!(first["outcome"], "refreshed", "{first}");
    // 2. Two newcomers, and u0 shows the other variant (it leaves its bucket):
    // +1. After the stored as_of, so that the refresh can be incremental
    // (earlier, they would be late events and make it full).
    let as_of = crate::helpers::ts(first["exposures"]["as_of"].as_str().unwrap());
    let later = (as_of + chrono::TimeDelta::seconds(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    env.insert(&[
        exposure("u4", "variant_a", &later),
        exposure("u5", "control", &later),
        exposure("u0", "variant_a", &later),
    ])
    .await;
    while chrono::Utc::now() <= crate::helpers::ts(&later) + chrono::TimeDelta::milliseconds(100) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let second = invoke_json(&watch, "metrics-refresh", refresh.clone())
        .await
        .unwrap();
    assert_eq!(
        second["exposures"]["payload"]["excluded_identities"], 1,
        "{second}"
    );
    // 3. The events table is gone: a failed refresh, then a sweep that fails it.
    env.clickhouse
        .query("RENAME TABLE events TO events_away")
        .execute()
        .await
        .unwrap();
    let failed = invoke_json(&watch, "metrics-refresh", refresh.clone()).await;
    assert!(failed.is_err_and(|e| e.contains("warehouse_error")));
    let report = invoke_json(&watch, "metrics-sweep", sweep.clone())
        .await
        .unwrap();
    assert_eq!(report["failed"], serde_json::json!([id]), "{report}");
    // 4. Back: the sweep refreshes it and every finding is 0 again.
    env.clickhouse
        .query("RENAME TABLE events_away TO events")
        .execute()
        .await
        .unwrap();
    let report = invoke_json(&watch, "metrics-sweep", sweep).await.unwrap();
    assert_eq!(report["refreshed"], serde_json::json!([id]), "{report}");
    let ended = chrono::Utc::now();
    let stdout = watch.stdout.clone();
    drop(watch);

    let text = std::fs::read_to_string(&stdout).unwrap();
    let lines = function_lines(&text);
    let records: Vec<&crate::metrics::Record> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Metrics(r) => Some(r),
            Line::Log(_) => None,
        })
        .collect();
    assert_eq!(records.len(), 3 + 2 * 9, "{text}");
    for r in &records {
        assert_eq!(r.namespace, "Exposures/IT");
        assert!(
            (began.timestamp_millis() - 1000..=ended.timestamp_millis() + 1000)
                .contains(&r.timestamp),
            "{}",
            r.json
        );
    }

    // Each refresh record against the log event of the same refresh just
    // before it: `refreshed` (mode, identities counted) or `refresh failed`.
    let mut counted = 0.0;
    let mut last_log: Option<&Value> = None;
    let mut refreshes = Vec::new();
    for line in &lines {
        match line {
            Line::Log(fields) => {
                if ["refreshed", "refresh failed"]
                    .contains(&fields["message"].as_str().unwrap_or(""))
                {
                    last_log = Some(fields);
                }
            }
            Line::Metrics(r) if r.metrics.contains_key("RefreshFailed") => {
                let log = last_log
                    .take()
                    .expect("a log event before each refresh record");
                assert_eq!(log["experiment_id"], id, "{log}");
                assert_eq!(r.text("ExperimentId"), id.to_string());
                assert_eq!(
                    r.dimensions,
                    [Vec::<String>::new(), vec!["ExperimentId".to_owned()]]
                );
                let failed = log["message"] == "refresh failed";
                assert_eq!(
                    r.get("RefreshFailed"),
                    f64::from(u8::from(failed)),
                    "{}",
                    r.json
                );
                if failed {
                    assert_eq!(
                        (r.get("IncrementalRefresh"), r.get("NewIdentities")),
                        (0.0, 0.0)
                    );
                } else {
                    let incremental = log["mode"] == "incremental";
                    assert_eq!(
                        r.get("IncrementalRefresh"),
                        f64::from(u8::from(incremental)),
                        "{log}"
                    );
                    let now = log["identities"].as_f64().unwrap();
                    assert_eq!(r.get("NewIdentities"), now - counted, "{log}");
                    counted = now;
                    assert!(r.get("RefreshDuration") >= log["query_ms"].as_f64().unwrap());
                }
                refreshes.push((
                    r.get("RefreshFailed"),
                    r.get("IncrementalRefresh"),
                    r.get("NewIdentities"),
                ));
            }
            Line::Metrics(_) => {}
        }
    }
    // What was done: full first refresh of 4, incremental +1, two failures, a good one.
    assert_eq!(
        refreshes,
        [
            (0.0, 0.0, 4.0),
            (0.0, 1.0, 1.0),
            (1.0, 0.0, 0.0),
            (1.0, 0.0, 0.0),
            (0.0, 1.0, 0.0)
        ]
    );

    // The sweeps: one running experiment, nothing skipped, a snapshot at most
    // the test's length old; refresh_failing while the table was away.
    let sweeps: Vec<&crate::metrics::Record> = records
        .iter()
        .copied()
        .filter(|r| !r.metrics.contains_key("RefreshFailed"))
        .collect();
    assert_eq!(sweeps.len(), 16);
    let elapsed = (ended - began).num_seconds() as f64 + 1.0;
    for (sweep, failing) in [(&sweeps[..8], 1.0), (&sweeps[8..], 0.0)] {
        let totals = sweep[0];
        assert_eq!(totals.dimensions, [Vec::<String>::new()]);
        assert_eq!(totals.get("RunningExperiments"), 1.0);
        assert_eq!(totals.get("SweepSkipped"), 0.0);
        let age = totals.get("MaxSnapshotAgeSeconds");
        assert!((0.0..=elapsed).contains(&age), "{}", totals.json);
        let findings: Vec<(&str, f64)> = sweep[1..]
            .iter()
            .map(|r| {
                assert_eq!(r.dimensions, [vec!["Finding".to_owned()]]);
                (r.text("Finding"), r.get("Findings"))
            })
            .collect();
        assert_eq!(
            findings,
            [
                ("multiple_exposure", 0.0),
                ("no_exposures", 0.0),
                ("refresh_failing", failing),
                ("srm", 0.0),
                ("stale", 0.0),
                ("stalled", 0.0),
                ("unexpected_variants", 0.0),
            ]
        );
    }
}
