//! The refresh through the handler against the real ClickHouse server.

use serde_json::{json, Value};

use crate::helpers::{exposure, ts, Options, TestEnv};
use crate::scenarios::{self, Scenario};

async fn run_on_server(s: Scenario) {
    let env = TestEnv::new().await;
    let id = env
        .experiment_for(
            s.environment_key,
            s.feature_name,
            Some(s.started_at),
            s.ended_at,
        )
        .await;
    env.insert(&s.events).await;
    env.set_now(ts(s.now));
    let answer = env
        .invoke(json!({"experiment_id": id}))
        .await
        .expect("refresh succeeds");
    assert_eq!(answer["outcome"], "refreshed", "{}", s.name);
    assert_eq!(
        answer["exposures"]["payload"], s.expected,
        "{}: {answer:#}",
        s.name
    );
    let as_of = s.ended_at.unwrap_or(s.now);
    assert_eq!(answer["exposures"]["as_of"], as_of, "{}", s.name);
    assert_eq!(
        env.stored(id).await["payload"],
        s.expected,
        "{}: stored payload",
        s.name
    );
}

macro_rules! server_scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_on_server(scenarios::$name()).await;
            }
        )*
    };
}

server_scenarios!(
    duplicates_count_once,
    first_seen_before_window_counts_at_first_in_window_exposure,
    other_value_outside_window_is_not_quarantined,
    window_bounds_are_half_open,
    exactly_72_hours_is_hourly,
    one_second_over_72_hours_is_daily,
    buckets_are_utc_days,
    buckets_are_utc_hours,
    multi_variant_identities_are_quarantined,
    variant_named_multiple_is_an_ordinary_variant,
    anonymous_and_unrelated_rows_are_ignored,
    unicode_and_quotes_in_names,
    empty_result,
    running_experiment_window_ends_now,
);

#[tokio::test]
async fn the_test_server_runs_in_a_non_utc_time_zone() {
    let env = TestEnv::new().await;
    let tz: String = env
        .clickhouse
        .query("SELECT timezone()")
        .fetch_one()
        .await
        .unwrap();
    assert_ne!(
        tz, "UTC",
        "the UTC-bucket scenarios prove nothing on a UTC server"
    );
}

#[tokio::test]
async fn utc_buckets_with_a_column_in_another_time_zone() {
    let env = TestEnv::with(Options {
        timestamp_type: "DateTime('America/New_York')",
        ..Options::default()
    })
    .await;
    let s = scenarios::buckets_are_utc_days();
    let id = env.experiment(Some(s.started_at), s.ended_at).await;
    env.insert(&s.events).await;
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(answer["exposures"]["payload"], s.expected);
}

#[tokio::test]
async fn sub_second_window_bounds_on_a_datetime_column() {
    // DateTime holds whole seconds: a row at 10:00:00 is before a start of 10:00:00.500,
    // a row at 10:00:01 is inside; an end of 11:00:00.250 still admits 11:00:00.
    let env = TestEnv::new().await;
    let id = env
        .experiment(
            Some("2026-06-01T10:00:00.500Z"),
            Some("2026-06-01T11:00:00.250Z"),
        )
        .await;
    env.insert(&[
        exposure("before", "control", "2026-06-01T10:00:00Z"),
        exposure("inside", "control", "2026-06-01T10:00:01Z"),
        exposure("last", "control", "2026-06-01T11:00:00Z"),
        exposure("after", "control", "2026-06-01T11:00:01Z"),
    ])
    .await;
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["points"],
        json!([
            {"bucket": "2026-06-01T10:00:00Z", "new_identities": {"control": 1}},
            {"bucket": "2026-06-01T11:00:00Z", "new_identities": {"control": 1}}
        ])
    );
    assert_eq!(answer["exposures"]["as_of"], "2026-06-01T11:00:00.250Z");
}

#[tokio::test]
async fn running_then_completed_experiment_becomes_final() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[
        exposure("u1", "control", "2026-06-01T01:00:00Z"),
        exposure("u2", "variant_a", "2026-06-01T03:00:00Z"),
    ])
    .await;

    env.set_now(ts("2026-06-01T02:00:00Z"));
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(answer["outcome"], "refreshed");
    assert_eq!(answer["exposures"]["is_final"], false);
    assert_eq!(answer["exposures"]["as_of"], "2026-06-01T02:00:00Z");
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["points"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    env.pg
        .execute(
            "UPDATE experiments SET status = 'completed', ended_at = '2026-06-05T00:00:00Z' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    env.set_now(ts("2026-06-06T00:00:00Z"));
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(answer["outcome"], "refreshed");
    assert_eq!(answer["exposures"]["is_final"], true);
    assert_eq!(answer["exposures"]["as_of"], "2026-06-05T00:00:00Z");
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["granularity"],
        "day"
    );

    // Final: returned as stored, without querying ClickHouse (here: unreachable).
    let offline = env.app_without_clickhouse();
    let again = exposures::handler::handle(&offline, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    assert_eq!(again["outcome"], "final");
    assert_eq!(again["exposures"], answer["exposures"]);
}

#[tokio::test]
async fn not_started_computes_nothing() {
    let env = TestEnv::with(Options {
        clickhouse_url: Some("http://127.0.0.1:1".into()),
        ..Options::default()
    })
    .await;
    let id = env.experiment(None, None).await;
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(
        answer,
        json!({"outcome": "not_started", "experiment_id": id, "exposures": null})
    );
    assert_eq!(env.stored(id).await, Value::Null);
}

#[tokio::test]
async fn unknown_experiment_fails_and_writes_nothing() {
    let env = TestEnv::new().await;
    let err = env
        .invoke(json!({"experiment_id": 987654}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    assert_eq!(err.to_string(), "experiment 987654 does not exist");
    assert_eq!(env.stored(987654).await, Value::Null);
}

#[tokio::test]
async fn unreachable_clickhouse_stamps_the_failure_and_keeps_the_payload() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    env.set_now(ts("2026-06-01T06:00:00Z"));
    let good = env.invoke(json!({"experiment_id": id})).await.unwrap();
    let before = env.stored(id).await;
    assert_eq!(before["last_error_at"], Value::Null);

    let offline = env.app_without_clickhouse();
    env.set_now(ts("2026-06-01T07:00:00Z"));
    let err = exposures::handler::handle(&offline, json!({"experiment_id": id}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "warehouse_error");
    assert!(
        err.to_string()
            .contains(&format!("refresh of experiment {id} failed")),
        "{err}"
    );

    let after = env.stored(id).await;
    assert_ne!(after["last_error_at"], Value::Null, "failure stamped");
    assert_eq!(after["payload"], before["payload"], "payload kept");
    assert_eq!(after["as_of"], before["as_of"], "as_of kept");

    let view = env.app.snapshot(id).await.unwrap();
    let view = serde_json::to_value(view).unwrap();
    assert_eq!(view["exposures"]["payload"], good["exposures"]["payload"]);
    assert_ne!(view["exposures"]["last_error_at"], Value::Null);

    // A good refresh clears the stamp.
    env.set_now(ts("2026-06-01T08:00:00Z"));
    env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(env.stored(id).await["last_error_at"], Value::Null);
}

#[tokio::test]
async fn missing_events_table_is_a_warehouse_error() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_EVENTS_TABLE", "no_such_table".into())],
        ..Options::default()
    })
    .await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let err = env.invoke(json!({"experiment_id": id})).await.unwrap_err();
    assert_eq!(err.code(), "warehouse_error");
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert_ne!(env.stored(id).await["last_error_at"], Value::Null);
}
