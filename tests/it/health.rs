//! `exposures.health` in every answer that carries a payload, computed from the
//! stored payload and the experiment's current `variant_weights`, against the
//! real servers.

use serde_json::{json, Value};

use crate::api::{call, v1, v2, Answer};
use crate::helpers::{exposure, ts, Ev, Options, TestEnv};

/// `control` identities on control, `variant_a` on variant_a, and `both`
/// identities on both (quarantined), all inside the window.
fn split(control: usize, variant_a: usize, both: usize) -> Vec<Ev> {
    let at = "2026-06-01T10:00:00Z";
    let mut events = Vec::new();
    events.extend((0..control).map(|i| exposure(&format!("c{i}"), "control", at)));
    events.extend((0..variant_a).map(|i| exposure(&format!("a{i}"), "variant_a", at)));
    for i in 0..both {
        events.push(exposure(&format!("b{i}"), "control", at));
        events.push(exposure(
            &format!("b{i}"),
            "variant_a",
            "2026-06-01T11:00:00Z",
        ));
    }
    events
}

pub(crate) async fn set_weights(env: &TestEnv, id: i64, weights: Value) {
    env.pg
        .execute(
            "UPDATE experiments SET variant_weights = $1 WHERE id = $2",
            &[&weights, &id],
        )
        .await
        .expect("set variant_weights");
}

fn sample_ratio(answer: &Value) -> &Value {
    &answer["exposures"]["health"]["sample_ratio"]
}

/// `GET /experiments/{id}/exposures` in the given payload version.
async fn get(env: &TestEnv, version: fn(&str, &str, Option<&str>) -> Value, id: i64) -> Answer {
    call(
        &env.app,
        version("GET", &format!("/experiments/{id}/exposures"), None),
    )
    .await
}

async fn running_experiment(env: &TestEnv, events: &[Ev]) -> i64 {
    env.set_now(ts("2026-06-02T00:00:00Z"));
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(events).await;
    id
}

#[tokio::test]
async fn health_follows_the_current_weights_without_a_refresh() {
    let env = TestEnv::new().await;
    let id = running_experiment(&env, &split(60, 60, 2)).await;
    set_weights(&env, id, json!({"control": 50, "variant_a": 50})).await;

    let refreshed = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(refreshed["outcome"], "refreshed");
    assert_eq!(
        refreshed["exposures"]["health"],
        json!({
            "sample_ratio": {
                "status": "ok", "reason": null,
                "observed": {"control": 60, "variant_a": 60},
                "expected": {"control": 60.0, "variant_a": 60.0},
                "chi_squared": 0.0, "degrees_of_freedom": 1, "p_value": 1.0,
                "unexpected_variants": [],
                "sequential": {"status": "ok", "p_value": 1.0, "onset_bucket": null}
            },
            "multiple_exposure": {"excluded_identities": 2, "share": 2.0 / 122.0, "warning": false},
            "findings": []
        }),
        "{refreshed:#}"
    );
    // Never stored: the row has the payload only.
    let stored = env.stored(id).await;
    assert!(stored.get("health").is_none(), "{stored}");
    assert!(stored["payload"].get("health").is_none(), "{stored}");

    // 90/10 intended: the same counts are now a mismatch, on the next read.
    set_weights(&env, id, json!({"control": 0.9, "variant_a": 0.1})).await;
    let read = get(&env, v2, id).await;
    let s = sample_ratio(&read.body);
    assert_eq!(s["status"], "mismatch", "{s}");
    assert_eq!(s["expected"]["control"], 108.0, "{s}");
    assert!(s["p_value"].as_f64().unwrap() < 1e-40, "{s}");

    // An arm never observed counts as 0; a variant outside the weights is unexpected.
    set_weights(&env, id, json!({"control": 1, "variant_b": 1})).await;
    let read = get(&env, v1, id).await;
    let s = sample_ratio(&read.body);
    assert_eq!(
        s["observed"],
        json!({"control": 60, "variant_a": 60, "variant_b": 0})
    );
    assert_eq!(s["unexpected_variants"], json!(["variant_a"]));
    assert_eq!(s["status"], "mismatch");
    assert_eq!(s["degrees_of_freedom"], 1);

    // Zero weights leave fewer than two arms.
    set_weights(&env, id, json!({"control": 0, "variant_a": 0})).await;
    let read = get(&env, v2, id).await;
    let s = sample_ratio(&read.body);
    assert_eq!(
        (&s["status"], &s["reason"]),
        (&json!("skipped"), &json!("single_arm"))
    );
    assert_eq!(s["unexpected_variants"], json!(["control", "variant_a"]));

    // No weights, or weights that are not an object of non-negative numbers:
    // skipped as no_weights, and the answer does not fail.
    for weights in [
        Value::Null,
        json!("50/50"),
        json!({"control": -1, "variant_a": 1}),
        json!([1, 1]),
    ] {
        set_weights(&env, id, weights.clone()).await;
        let read = get(&env, v2, id).await;
        assert_eq!(read.status, 200, "{weights}: {}", read.body);
        let s = sample_ratio(&read.body);
        assert_eq!(
            (&s["status"], &s["reason"]),
            (&json!("skipped"), &json!("no_weights")),
            "{weights}"
        );
        assert_eq!(s["observed"], json!({"control": 60, "variant_a": 60}));
        assert_eq!(s["unexpected_variants"], json!([]));
        assert_eq!(s["p_value"], Value::Null);
    }
    // A number PostgreSQL holds but a double cannot: malformed too, not a failure.
    env.pg
        .execute(
            "UPDATE experiments SET variant_weights = '{\"control\": 1e400, \"variant_a\": 1}' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let read = get(&env, v1, id).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(sample_ratio(&read.body)["reason"], "no_weights");
}

#[tokio::test]
async fn health_in_api_refresh_scheduled_and_final_answers() {
    let env = TestEnv::new().await;
    // 10 of 1000 identities quarantined: exactly 1% with exactly 10, a warning.
    let id = running_experiment(&env, &split(500, 490, 10)).await;
    set_weights(&env, id, json!({"control": 1, "variant_a": 1})).await;

    let posted = call(
        &env.app,
        v2(
            "POST",
            &format!("/experiments/{id}/exposures/refresh"),
            None,
        ),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(
        posted.body["exposures"]["health"]["multiple_exposure"],
        json!({"excluded_identities": 10, "share": 0.01, "warning": true})
    );
    assert_eq!(sample_ratio(&posted.body)["status"], "ok");

    let scheduled = env
        .invoke(json!({
            "version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.scheduler",
            "account": "123456789012", "time": "2026-06-02T00:00:00Z", "region": "eu-west-1",
            "resources": [], "detail": format!("{{\"experiment_id\": {id}}}")
        }))
        .await
        .unwrap();
    assert_eq!(scheduled["outcome"], "refreshed");
    assert_eq!(
        scheduled["exposures"]["health"],
        posted.body["exposures"]["health"]
    );

    // A completed experiment: the refresh that makes it final, then `final` answers.
    let ended = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-01T10:30:00Z"))
        .await;
    set_weights(&env, ended, json!({"control": 1, "variant_a": 1})).await;
    let first = env.invoke(json!({"experiment_id": ended})).await.unwrap();
    assert_eq!(first["exposures"]["is_final"], true);
    // 10:30 cuts the quarantined identities' second exposure off: 510 on control.
    assert_eq!(
        sample_ratio(&first)["observed"],
        json!({"control": 510, "variant_a": 490})
    );
    set_weights(&env, ended, json!({"control": 1, "variant_a": 3})).await;
    let last = env.invoke(json!({"experiment_id": ended})).await.unwrap();
    assert_eq!(last["outcome"], "final");
    assert_eq!(sample_ratio(&last)["status"], "mismatch", "{last:#}");
    assert_eq!(sample_ratio(&last)["expected"]["variant_a"], 750.0);
}

#[tokio::test]
async fn no_payload_no_health() {
    let env = TestEnv::new().await;
    let id = running_experiment(&env, &split(5, 5, 0)).await;
    set_weights(&env, id, json!({"control": 1, "variant_a": 1})).await;
    // Nothing stored yet: exposures is null.
    let read = get(&env, v2, id).await;
    assert_eq!(read.body["exposures"], Value::Null);
    // A failed refresh stores a stamp and no payload: health is null.
    env.app_without_clickhouse()
        .refresh(id, None)
        .await
        .expect_err("ClickHouse unreachable");
    let read = get(&env, v2, id).await;
    assert!(
        read.body["exposures"]["last_error_at"].is_string(),
        "{}",
        read.body
    );
    assert_eq!(read.body["exposures"]["payload"], Value::Null);
    assert_eq!(read.body["exposures"]["health"], Value::Null);
    // A good one: fewer than 100 identities, so the test is skipped.
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    let s = sample_ratio(&answer);
    assert_eq!(
        (&s["status"], &s["reason"]),
        (&json!("skipped"), &json!("too_few_identities"))
    );
    assert_eq!(s["observed"], json!({"control": 5, "variant_a": 5}));
}

#[tokio::test]
async fn a_view_without_the_column_means_no_weights() {
    let env = TestEnv::with(Options {
        settings: vec![(
            "EXPOSURES_EXPERIMENTS_RELATION",
            "product_experiments".into(),
        )],
        ..Options::default()
    })
    .await;
    env.pg
        .batch_execute(
            "CREATE VIEW product_experiments AS
             SELECT id, environment_key, feature_name, status, started_at, ended_at FROM experiments",
        )
        .await
        .unwrap();
    let id = running_experiment(&env, &split(70, 40, 0)).await;
    // The table has weights; the view does not show them.
    set_weights(&env, id, json!({"control": 1, "variant_a": 1})).await;

    let refreshed = env.invoke(json!({"experiment_id": id})).await.unwrap();
    let s = sample_ratio(&refreshed);
    assert_eq!(
        (&s["status"], &s["reason"]),
        (&json!("skipped"), &json!("no_weights")),
        "{refreshed:#}"
    );
    let read = get(&env, v1, id).await;
    assert_eq!(
        read.body["exposures"]["health"],
        refreshed["exposures"]["health"]
    );
    let swept = env.invoke(json!({"action": "refresh_due"})).await.unwrap();
    assert_eq!(swept["refreshed"], json!([id]));
}

/// Warnings recorded on this thread: (experiment_id field, message).
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "experiment_id" => self.0 = format!("{value:?}"),
                    "message" => self.1 = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new(), String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push((fields.0, fields.1));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn malformed_weights_are_logged_once_per_invocation_naming_the_experiment() {
    let env = TestEnv::new().await;
    let id = running_experiment(&env, &split(60, 60, 0)).await;
    set_weights(&env, id, json!({"control": "half", "variant_a": 1})).await;
    let warnings = Warnings::default();
    // The test runs on one thread, so every event of these invocations lands here.
    let _guard = tracing::subscriber::set_default(warnings.clone());

    let refresh = format!("/experiments/{id}/exposures/refresh");
    let posted = call(&env.app, v2("POST", &refresh, None)).await;
    assert_eq!(sample_ratio(&posted.body)["reason"], "no_weights");
    let logged = std::mem::take(&mut *warnings.0.lock().unwrap());
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].0, id.to_string());
    assert!(logged[0].1.contains("variant_weights"), "{logged:?}");

    env.invoke(json!({"experiment_id": id})).await.unwrap();
    get(&env, v1, id).await;
    assert_eq!(warnings.0.lock().unwrap().len(), 2, "one per invocation");
}
