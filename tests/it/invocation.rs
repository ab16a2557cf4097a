//! Invocation shapes (SPEC 5.2) through the handler.

use serde_json::{json, Value};

use crate::helpers::{exposure, ts, TestEnv};

fn rule(detail: Value) -> Value {
    json!({"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
           "source": "aws.events", "account": "123456789012", "time": "2026-06-01T00:00:00Z",
           "region": "eu-west-1", "resources": ["arn:aws:events:eu-west-1:123456789012:rule/exposures"],
           "detail": detail})
}

#[tokio::test]
async fn direct_and_scheduled_refreshes_give_the_same_snapshot() {
    let env = TestEnv::new().await;
    let id = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-02T00:00:00Z"))
        .await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;

    let direct = env.invoke(json!({"experiment_id": id})).await.unwrap();
    let action = env
        .invoke(json!({"action": "refresh", "experiment_id": id}))
        .await
        .unwrap();
    assert_eq!(
        action["outcome"], "final",
        "second refresh of an ended experiment"
    );
    assert_eq!(action["exposures"], direct["exposures"]);

    let id2 = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let by_rule = env
        .invoke(rule(json!({"experiment_id": id2})))
        .await
        .unwrap();
    assert_eq!(by_rule["outcome"], "refreshed");
    let mut scheduler = rule(Value::String(format!("{{\"experiment_id\": {id2}}}")));
    scheduler["source"] = json!("aws.scheduler");
    env.set_now(ts("2026-06-01T03:00:00Z"));
    let by_scheduler = env.invoke(scheduler).await.unwrap();
    assert_eq!(by_scheduler["outcome"], "refreshed");
    assert_eq!(by_scheduler["exposures"]["as_of"], "2026-06-01T03:00:00Z");
    assert_eq!(
        by_scheduler["exposures"]["payload"],
        direct["exposures"]["payload"]
    );
}

#[tokio::test]
async fn malformed_input_fails_and_writes_nothing() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let inputs = [
        json!({"experiment_id": "seven"}),
        json!({"experiment_id": 0}),
        json!({"experiment": id}),
        json!({"action": "refresh"}),
        json!({"action": "delete", "experiment_id": id}),
        json!([id]),
        json!(null),
        rule(json!("{\"experiment_id\": ")),
    ];
    for input in inputs {
        let err = env.invoke(input.clone()).await.unwrap_err();
        assert_eq!(err.code(), "bad_request", "{input}: {err}");
        assert!(err.to_string().starts_with("invalid input: "), "{err}");
    }
    let rows: i64 = env
        .pg
        .query_one("SELECT count(*) FROM experiment_exposures", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn database_unavailable_is_reported() {
    let env = TestEnv::new().await;
    let app = env.app_without_postgres();
    let err = exposures::handler::handle(&app, json!({"experiment_id": 1}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "database_unavailable");
    assert!(
        err.to_string().starts_with("PostgreSQL unavailable"),
        "{err}"
    );
}

#[test]
fn bad_configuration_fails_the_cold_start_naming_the_variable() {
    for (variable, value) in [
        ("EXPOSURES_SWEEP_CONCURRENCY", "many"),
        ("CLICKHOUSE_URL", "clickhouse:8123"),
        ("DATABASE_URL", "postgres://app:hunter2@[::1"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_exposures"))
            .env(variable, value)
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{variable}: {printed}");
        assert!(printed.contains(variable), "{variable}: {printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
