//! `sample_ratio.sequential` and `health.findings` (SPEC 5.6) in real API
//! answers, from data in the real ClickHouse and snapshots in the real
//! PostgreSQL, with the app's clock fixed.

use serde_json::{json, Value};

use crate::api::{call, v1, v2, Answer};
use crate::health::set_weights;
use crate::helpers::{exposure, ts, Ev, Options, TestEnv};
use crate::metrics::Captured;

/// Inserts `n` identities (`prefix0`...) first exposed to `variant` on `day`
/// (`2026-06-04`), spread over its hours, for flag `feature`.
async fn day(env: &TestEnv, feature: &str, day: &str, variant: &str, n: u64, prefix: &str) {
    let start = ts(&format!("{day}T00:00:00Z")).timestamp();
    env.clickhouse
        .query(&format!(
            "INSERT INTO events SELECT 'prod', '$flag_exposure', '{feature}',
                    concat('{prefix}', toString(number)), '{variant}',
                    toDateTime({start} + (number * 263) % 86400) FROM numbers({n})"
        ))
        .execute()
        .await
        .expect("insert a day of exposures");
}

/// 200/200 a day from 2026-06-01 to 06-03, then 300/100 a day to 06-07.
async fn srm_from_the_fourth_day(env: &TestEnv, feature: &str) {
    for (d, (c, a)) in [
        (1, (200, 200)),
        (2, (200, 200)),
        (3, (200, 200)),
        (4, (300, 100)),
        (5, (300, 100)),
        (6, (300, 100)),
        (7, (300, 100)),
    ] {
        let date = format!("2026-06-0{d}");
        day(env, feature, &date, "control", c, &format!("c{d}_")).await;
        day(env, feature, &date, "variant_a", a, &format!("a{d}_")).await;
    }
}

async fn get(env: &TestEnv, id: i64) -> Answer {
    let read = call(
        &env.app,
        v2("GET", &format!("/experiments/{id}/exposures"), None),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    read
}

async fn post(env: &TestEnv, id: i64) -> Answer {
    call(
        &env.app,
        v1(
            "POST",
            &format!("/experiments/{id}/exposures/refresh"),
            Some(&id.to_string()),
        ),
    )
    .await
}

fn health(answer: &Answer) -> &Value {
    &answer.body["exposures"]["health"]
}

fn codes(answer: &Answer) -> Vec<&str> {
    health(answer)["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings: {}", answer.body))
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect()
}

fn no_throttle() -> Options {
    Options {
        settings: vec![("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "0".into())],
        ..Options::default()
    }
}

#[tokio::test]
async fn an_srm_that_starts_part_way_is_found_from_its_onset_bucket() {
    let env = TestEnv::with(no_throttle()).await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    set_weights(&env, id, json!({"control": 1, "variant_a": 1})).await;
    srm_from_the_fourth_day(&env, "checkout").await;

    env.set_now(ts("2026-06-08T00:00:00Z"));
    let posted = post(&env, id).await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    let read = get(&env, id).await;
    assert_eq!(health(&read), health(&posted));
    let sample_ratio = &health(&read)["sample_ratio"];
    let sequential = &sample_ratio["sequential"];
    assert_eq!(sequential["status"], "mismatch", "{sequential}");
    // Running p-values after each day (ssrm-test's formula, 1/BF with
    // concentration 10000 at 50/50): 1, 1, 1, 0.192, 0.00139, 5.49e-7, 1.54e-11;
    // the first below 0.001 is the sixth day's.
    assert_eq!(sequential["onset_bucket"], "2026-06-06T00:00:00Z");
    let p = sequential["p_value"].as_f64().unwrap();
    assert!((p / 1.542821607320342e-11 - 1.0).abs() < 1e-6, "{p}");
    assert_eq!(
        sample_ratio["observed"],
        json!({"control": 1800, "variant_a": 1000})
    );
    assert_eq!(
        health(&read)["findings"],
        json!([{"code": "srm", "severity": "error", "since": "2026-06-06T00:00:00Z",
                "detail": "The split over the arms is unlikely under the weights: sequential p-value 1.543e-11 (below 0.001)."}])
    );

    // Read back as of the fifth day, the same data says nothing yet: the
    // running p-value was 0.00139.
    let early = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    set_weights(&env, early, json!({"control": 1, "variant_a": 1})).await;
    env.set_now(ts("2026-06-06T00:00:00Z"));
    let posted = post(&env, early).await;
    let sequential = &health(&posted)["sample_ratio"]["sequential"];
    assert_eq!(sequential["status"], "ok", "{sequential}");
    assert_eq!(sequential["onset_bucket"], Value::Null);
    let p = sequential["p_value"].as_f64().unwrap();
    assert!((p / 0.0013916116627989944 - 1.0).abs() < 1e-6, "{p}");
    assert_eq!(codes(&posted), Vec::<&str>::new());

    // Without weights the sequential test is not run.
    set_weights(&env, early, Value::Null).await;
    assert_eq!(
        health(&get(&env, early).await)["sample_ratio"]["sequential"],
        Value::Null
    );
}

#[tokio::test]
async fn an_incremental_and_a_full_refresh_of_the_same_points_answer_the_same() {
    let env = TestEnv::with(no_throttle()).await;
    let emf = Captured::default();
    let app = emf.attach(env.another_app(&[]));
    let incremental = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let full = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    for id in [incremental, full] {
        set_weights(&env, id, json!({"control": 1, "variant_a": 1})).await;
    }
    srm_from_the_fourth_day(&env, "checkout").await;

    // Hourly at first (60 h), then daily: the incremental refresh folds the
    // stored hours into days.
    env.set_now(ts("2026-06-03T12:00:00Z"));
    let (hourly, _, mode) = crate::incremental::refresh(&app, incremental).await;
    assert_eq!(mode.as_str(), "full");
    assert_eq!(hourly["timeseries"]["granularity"], "hour");
    env.set_now(ts("2026-06-08T00:00:00Z"));
    let (a, _, mode) = crate::incremental::refresh(&app, incremental).await;
    assert_eq!(mode.as_str(), "incremental");
    let (b, _, mode) = crate::incremental::refresh(&app, full).await;
    assert_eq!(mode.as_str(), "full");
    assert_eq!(a, b, "the same stored points");
    let records = emf.take();
    let flags: Vec<f64> = records
        .iter()
        .map(|r| r.get("IncrementalRefresh"))
        .collect();
    assert_eq!(flags, [0.0, 1.0, 0.0]);

    let (from_incremental, from_full) = (get(&env, incremental).await, get(&env, full).await);
    assert_eq!(health(&from_incremental), health(&from_full));
    assert_eq!(
        health(&from_full)["sample_ratio"]["sequential"]["onset_bucket"],
        "2026-06-06T00:00:00Z"
    );
    assert_eq!(codes(&from_full), ["srm"]);
}

#[tokio::test]
async fn no_exposures_stale_stalled_and_refresh_failing_from_real_refreshes() {
    let env = TestEnv::with(no_throttle()).await;
    // Started 25 hours before the clock, nothing in ClickHouse.
    let quiet = env
        .experiment_for("prod", "quiet", Some("2026-06-01T00:00:00Z"), None)
        .await;
    env.set_now(ts("2026-06-02T01:00:00Z"));
    let posted = post(&env, quiet).await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(
        health(&posted)["findings"],
        json!([{"code": "no_exposures", "severity": "error", "since": "2026-06-02T00:00:00Z",
                "detail": "Running for 25 hours and no identity has been counted."}])
    );
    // Stale exactly 3600 s after as_of, not a second before.
    env.set_now(ts("2026-06-02T01:59:59Z"));
    assert_eq!(codes(&get(&env, quiet).await), ["no_exposures"]);
    env.set_now(ts("2026-06-02T02:00:00Z"));
    let read = get(&env, quiet).await;
    assert_eq!(codes(&read), ["no_exposures", "stale"]);
    assert_eq!(
        health(&read)["findings"][1]["since"],
        "2026-06-02T02:00:00Z"
    );
    // Paused: neither is a finding any more.
    env.pg
        .execute(
            "UPDATE experiments SET status = 'paused' WHERE id = $1",
            &[&quiet],
        )
        .await
        .unwrap();
    assert_eq!(codes(&get(&env, quiet).await), Vec::<&str>::new());

    // Exposures on the first morning only, read two days later: stalled.
    let faded = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let events: Vec<Ev> = (0..5)
        .map(|i| exposure(&format!("u{i}"), "control", "2026-06-01T10:20:00Z"))
        .collect();
    env.insert(&events).await;
    env.set_now(ts("2026-06-03T00:00:00Z"));
    let posted = post(&env, faded).await;
    assert_eq!(
        health(&posted)["findings"],
        json!([{"code": "stalled", "severity": "warning", "since": "2026-06-01T11:00:00Z",
                "detail": "No first exposure for 37 hours before the snapshot's as_of (last bucket ended 2026-06-01T11:00:00Z)."}])
    );

    // The events table goes away: the refresh fails (502), the stored payload
    // stays, and the answer says the refresh is failing, then stale too.
    env.clickhouse
        .query("RENAME TABLE events TO events_away")
        .execute()
        .await
        .unwrap();
    env.set_now(ts("2026-06-03T00:10:00Z"));
    let failed = post(&env, faded).await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    let read = get(&env, faded).await;
    assert_eq!(read.body["exposures"]["as_of"], "2026-06-03T00:00:00Z");
    assert_eq!(codes(&read), ["refresh_failing", "stalled"]);
    let failing = &health(&read)["findings"][0];
    assert_eq!(failing["severity"], "error");
    assert_eq!(failing["since"], Value::Null);
    let last_error_at = read.body["exposures"]["last_error_at"].as_str().unwrap();
    assert_eq!(
        failing["detail"],
        format!("The last refresh failed at {last_error_at}, after the stored snapshot (as_of 2026-06-03T00:00:00Z).")
    );
    env.set_now(ts("2026-06-03T01:00:00Z"));
    assert_eq!(
        codes(&get(&env, faded).await),
        ["refresh_failing", "stale", "stalled"]
    );

    // Back: a good refresh clears the failure and the staleness.
    env.clickhouse
        .query("RENAME TABLE events_away TO events")
        .execute()
        .await
        .unwrap();
    let posted = post(&env, faded).await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(codes(&posted), ["stalled"]);
    assert_eq!(codes(&get(&env, faded).await), ["stalled"]);
}
