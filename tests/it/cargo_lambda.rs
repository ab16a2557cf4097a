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
        // observed (its one identity is quarantined), and 2 identities are too few.
        assert_eq!(
            v["exposures"]["health"],
            serde_json::json!({
                "sample_ratio": {
                    "status": "skipped", "reason": "too_few_identities",
                    "observed": {"control": 2, "variant_a": 0},
                    "expected": null, "chi_squared": null, "degrees_of_freedom": null,
                    "p_value": null, "unexpected_variants": []
                },
                "multiple_exposure": {"excluded_identities": 1, "share": 1.0 / 3.0, "warning": false}
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

fn log_file(root: &Path, name: &str) -> std::fs::File {
    let dir = root.join("target/cargo-lambda");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(name)).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_watch(env: &TestEnv) -> Watch {
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
        // The function's logs, for a look after a failure.
        .stdout(log_file(root, "watch.log"))
        .stderr(log_file(root, "watch.err.log"))
        .process_group(0);
    for (key, value) in &env.settings {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .expect("cargo lambda is installed (pip install cargo-lambda)");
    let watch = Watch { child, port };
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

    let watch = start_watch(&env);
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
