//! The sweep (SPEC 5.4) against the real servers.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::helpers::{exposure, ts, TestEnv};

pub(crate) async fn set_status(env: &TestEnv, id: i64, status: &str) {
    env.pg
        .execute(
            "UPDATE experiments SET status = $2 WHERE id = $1",
            &[&id, &status],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn refreshes_what_is_due_and_leaves_the_rest_alone() {
    let env = TestEnv::new().await;
    let not_started = env.experiment(None, None).await;
    let running = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let paused = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    set_status(&env, paused, "paused").await;
    let completed = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-03T00:00:00Z"))
        .await;
    let final_ = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-02T00:00:00Z"))
        .await;
    let final_payload = json!({"already": "final"});
    env.app
        .store
        .store_payload(final_, ts("2026-06-02T00:00:00Z"), &final_payload)
        .await
        .unwrap();
    let stale = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-04T00:00:00Z"))
        .await;
    env.app
        .store
        .store_payload(stale, ts("2026-06-02T00:00:00Z"), &json!({"stale": true}))
        .await
        .unwrap();
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    let final_before = env.stored(final_).await;

    env.set_now(ts("2026-06-10T00:00:00Z"));
    let report = env.invoke(json!({"action": "refresh_due"})).await.unwrap();
    assert_eq!(
        report,
        json!({"refreshed": [running, paused, completed, stale], "failed": [], "skipped": []})
    );
    assert_eq!(
        env.stored(not_started).await,
        Value::Null,
        "not started: untouched"
    );
    assert_eq!(env.stored(final_).await, final_before, "final: untouched");
    for id in [completed, stale] {
        let view = serde_json::to_value(env.app.snapshot(id).await.unwrap()).unwrap();
        assert_eq!(
            view["exposures"]["is_final"], true,
            "completed experiments end final"
        );
        assert_eq!(
            view["exposures"]["payload"]["timeseries"]["points"][0]["new_identities"],
            json!({"control": 1})
        );
    }
    // The next sweep has only the running ones left.
    let report = env.invoke(json!({"action": "refresh_due"})).await.unwrap();
    assert_eq!(report["refreshed"], json!([running, paused]));
}

#[tokio::test]
async fn empty_eventbridge_and_scheduler_details_mean_the_sweep() {
    let env = TestEnv::new().await;
    let running = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.set_now(ts("2026-06-02T00:00:00Z"));
    let rule = json!({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-06-02T00:00:00Z", "region": "eu-west-1",
        "resources": [], "detail": {}});
    assert_eq!(
        env.invoke(rule.clone()).await.unwrap()["refreshed"],
        json!([running])
    );
    let mut scheduler = rule;
    scheduler["source"] = json!("aws.scheduler");
    scheduler["detail"] = json!("{}");
    assert_eq!(
        env.invoke(scheduler).await.unwrap()["refreshed"],
        json!([running])
    );
}

#[tokio::test]
async fn one_failing_experiment_does_not_stop_the_others() {
    let env = TestEnv::new().await;
    let ids: Vec<i64> = futures_util::future::join_all(
        (0..5).map(|_| env.experiment(Some("2026-06-01T00:00:00Z"), None)),
    )
    .await;
    let heavy = env
        .experiment_for("prod", "heavy", Some("2026-06-01T00:00:00Z"), None)
        .await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    // 100 000 exposures of the heavy flag: more than user `limited` may read.
    env.clickhouse
        .query(
            "INSERT INTO events SELECT 'prod', '$flag_exposure', 'heavy', toString(number), 'control',
                    toDateTime(1780272000 + number % 3600) FROM numbers(100000)",
        )
        .execute()
        .await
        .unwrap();
    env.set_now(ts("2026-06-02T00:00:00Z"));
    let app = env.another_app(&[
        ("CLICKHOUSE_USER", "limited"),
        ("EXPOSURES_SWEEP_CONCURRENCY", "2"),
    ]);
    let report = exposures::handler::handle(&app, json!({"action": "refresh_due"}), None)
        .await
        .unwrap();
    assert_eq!(report["failed"], json!([heavy]), "{report}");
    assert_eq!(report["refreshed"], json!(ids), "{report}");
    let stamped = env.stored(heavy).await;
    assert!(
        stamped["last_error_at"].is_string(),
        "failure stamped: {stamped}"
    );
    assert_eq!(stamped["payload"], Value::Null);
}

#[tokio::test]
async fn stops_starting_refreshes_when_the_deadline_is_near() {
    let env = TestEnv::new().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(env.experiment(Some("2026-06-01T00:00:00Z"), None).await);
    }
    // A clock that advances 10 s at every reading. With concurrency 1, each refresh
    // reads it twice (budget check, window end), and needs 20 s (query timeout) + 5 s left.
    let t0 = ts("2026-06-02T00:00:00Z");
    let clock_time = Arc::new(Mutex::new(t0));
    let clock = {
        let clock_time = Arc::clone(&clock_time);
        Arc::new(move || {
            let mut t = clock_time.lock().unwrap();
            let now = *t;
            *t = now + TimeDelta::seconds(10);
            now
        })
    };
    let app = env.app_with_clock(&[("EXPOSURES_SWEEP_CONCURRENCY", "1")], clock);
    let deadline: DateTime<Utc> = t0 + TimeDelta::seconds(70);
    let report = exposures::handler::handle(&app, json!({"action": "refresh_due"}), Some(deadline))
        .await
        .unwrap();
    // Checks at t0 (70 s left), t0+20 (50 s), t0+40 (30 s) start; t0+60 (10 s) does not.
    assert_eq!(
        report,
        json!({"refreshed": ids[..3], "failed": [], "skipped": ids[3..]})
    );
    for id in &ids[3..] {
        assert_eq!(
            env.stored(*id).await,
            Value::Null,
            "skipped: nothing written"
        );
    }

    // A deadline already too close: nothing starts.
    let report =
        exposures::handler::handle(&env.app, json!({"action": "refresh_due"}), Some(Utc::now()))
            .await
            .unwrap();
    assert_eq!(report["refreshed"], json!([]));
    assert_eq!(report["skipped"], json!(ids));
}

#[tokio::test]
async fn sweep_fails_only_when_it_cannot_run() {
    let env = TestEnv::new().await;
    let app = env.app_without_postgres();
    let err = exposures::handler::handle(&app, json!({"action": "refresh_due"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "database_unavailable");
}
