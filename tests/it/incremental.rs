//! Incremental refresh (README "Incremental refresh"): after every refresh the
//! stored payload equals a full computation over the same window and data, and
//! the refresh says how it computed it.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use exposures::incremental::FullReason;
use exposures::service::Mode;
use exposures::summary::Payload;
use exposures::warehouse::{delta, Target, TimestampKind, TransitionRow};
use exposures::window::Window;
use exposures::App;
use serde_json::{json, Value};

use crate::distributed::Shards;
use crate::helpers::{exposure, insert, ts, Ev, TestEnv};

/// Refreshes experiment `id` with `app`; returns the stored payload, its `as_of` and the mode.
pub async fn refresh(app: &App, id: i64) -> (Value, DateTime<Utc>, Mode) {
    let (experiment, stored) = app.load(id).await.expect("load");
    let (_, view, mode) = app
        .refresh_with_mode(&experiment, stored, None)
        .await
        .expect("refresh succeeds");
    let exposures = view.exposures.expect("stored");
    (
        exposures.payload.expect("payload"),
        exposures.as_of.expect("as_of"),
        mode.expect("computed"),
    )
}

/// The payload a full refresh computes for experiment `id` at `as_of`, on the data as it is now.
pub async fn full_payload(app: &App, id: i64, as_of: DateTime<Utc>) -> Value {
    let (experiment, _) = app.load(id).await.expect("load");
    let started_at = experiment.started_at.expect("started");
    let window = Window::new(started_at, Some(as_of), as_of);
    let target = Target {
        environment_key: &experiment.environment_key,
        feature_name: &experiment.feature_name,
    };
    let computed = app
        .warehouse
        .exposures(target, &window)
        .await
        .expect("full query");
    serde_json::to_value(Payload::build(window.granularity, computed.counts)).unwrap()
}

/// Refreshes at `now`, checks the mode and that the stored payload is the full one.
async fn step(env: &TestEnv, id: i64, now: &str, expected: Mode) -> Value {
    env.set_now(ts(now));
    let (payload, as_of, mode) = refresh(&env.app, id).await;
    assert_eq!(as_of, ts(now));
    assert_eq!(mode, expected, "at {now}");
    assert_eq!(payload, full_payload(&env.app, id, as_of).await, "at {now}");
    payload
}

/// Waits until every mutation of the test database's tables is done (18.16 runs them in the background).
pub async fn wait_for_mutations(client: &clickhouse::Client) {
    for _ in 0..200 {
        let pending: u64 = client
            .query("SELECT toUInt64(count()) FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
            .fetch_one()
            .await
            .expect("read system.mutations");
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mutations did not finish");
}

#[tokio::test]
async fn every_kind_of_change_ends_exactly_where_a_full_refresh_does() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[
        exposure("u1", "control", "2026-06-01T01:10:00Z"),
        exposure("u2", "variant_a", "2026-06-01T02:20:00Z"),
        exposure("u3", "control", "2026-06-01T03:30:00Z"),
        exposure("", "control", "2026-06-01T03:00:00Z"),
    ])
    .await;
    step(
        &env,
        id,
        "2026-06-01T10:00:00Z",
        Mode::Full(FullReason::First),
    )
    .await;

    // New, returning, switching (leaves its bucket for excluded_identities), anonymous.
    env.insert(&[
        exposure("u4", "control", "2026-06-01T10:30:00Z"),
        exposure("u1", "control", "2026-06-01T10:40:00Z"),
        exposure("u3", "variant_a", "2026-06-01T10:50:00Z"),
        exposure("", "variant_a", "2026-06-01T10:55:00Z"),
        // Not yet in the window: counted by a later refresh.
        exposure("u5", "control", "2026-06-01T11:00:00Z"),
    ])
    .await;
    let payload = step(&env, id, "2026-06-01T11:00:00Z", Mode::Incremental).await;
    assert_eq!(
        payload,
        json!({"excluded_identities": 1, "timeseries": {"granularity": "hour", "points": [
            {"bucket": "2026-06-01T01:00:00Z", "new_identities": {"control": 1}},
            {"bucket": "2026-06-01T02:00:00Z", "new_identities": {"variant_a": 1}},
            {"bucket": "2026-06-01T10:00:00Z", "new_identities": {"control": 1}}
        ]}})
    );

    // Past 72 hours: the hourly payload folds into days.
    env.insert(&[exposure("u6", "variant_a", "2026-06-04T00:30:00Z")])
        .await;
    let payload = step(&env, id, "2026-06-04T01:00:00Z", Mode::Incremental).await;
    assert_eq!(payload["timeseries"]["granularity"], "day");

    // A late event (before the stored as_of, inserted after that refresh), earlier than
    // u2's first exposure: the window changed, so the refresh is full and u2's bucket moves.
    env.insert(&[exposure("u2", "variant_a", "2026-05-31T23:59:59Z")])
        .await;
    env.insert(&[exposure("u2", "variant_a", "2026-06-01T00:00:01Z")])
        .await;
    step(
        &env,
        id,
        "2026-06-04T02:00:00Z",
        Mode::Full(FullReason::ChangedWindow),
    )
    .await;
    step(&env, id, "2026-06-04T03:00:00Z", Mode::Incremental).await;

    // A deletion: the window's content fingerprint changed.
    env.clickhouse
        .query("ALTER TABLE events DELETE WHERE identifier = 'u4'")
        .execute()
        .await
        .expect("delete");
    wait_for_mutations(&env.clickhouse).await;
    let payload = step(
        &env,
        id,
        "2026-06-04T04:00:00Z",
        Mode::Full(FullReason::ChangedWindow),
    )
    .await;
    // u4 left; u5 (10:00 exactly at the earlier as_of) is in.
    assert_eq!(
        payload["timeseries"]["points"][0]["new_identities"],
        json!({"control": 2, "variant_a": 1}),
        "{payload}"
    );

    // The final snapshot is always full.
    env.pg
        .execute(
            "UPDATE experiments SET status = 'completed', ended_at = $2 WHERE id = $1",
            &[&id, &ts("2026-06-04T05:00:00Z")],
        )
        .await
        .unwrap();
    step(
        &env,
        id,
        "2026-06-04T05:00:00Z",
        Mode::Full(FullReason::Final),
    )
    .await;
}

#[tokio::test]
async fn a_large_change_is_computed_in_full() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let rows = |n: u64, prefix: &'static str, at: &'static str| {
        env.clickhouse
            .query(
                "INSERT INTO events SELECT 'prod', '$flag_exposure', 'checkout', \
                 concat(?, toString(number)), 'control', toDateTime(?) FROM numbers(?)",
            )
            .bind(prefix)
            .bind(ts(at).timestamp())
            .bind(n)
            .execute()
    };
    rows(20_000, "u", "2026-06-01T01:00:00Z").await.unwrap();
    step(
        &env,
        id,
        "2026-06-01T02:00:00Z",
        Mode::Full(FullReason::First),
    )
    .await;
    // More than 2 % of the stored rows, and more than a small change.
    let changed = exposures::incremental::SMALL_CHANGE_ROWS + 1;
    rows(changed, "n", "2026-06-01T02:10:00Z").await.unwrap();
    step(
        &env,
        id,
        "2026-06-01T03:00:00Z",
        Mode::Full(FullReason::LargeChange),
    )
    .await;
    env.insert(&[exposure("n3", "control", "2026-06-01T03:10:00Z")])
        .await;
    step(&env, id, "2026-06-01T04:00:00Z", Mode::Incremental).await;
}

/// The incremental query groups changed identities by a 64-bit hash of the
/// identifier. Forcing every identifier onto one hash (a rewritten query text)
/// must be seen as a collision, never answered as one identity.
#[tokio::test]
async fn identities_sharing_a_grouping_key_are_seen_not_merged() {
    let env = TestEnv::new().await;
    env.insert(&[
        exposure("a", "control", "2026-06-01T01:00:00Z"),
        exposure("b", "variant", "2026-06-01T01:10:00Z"),
        exposure("a", "control", "2026-06-01T02:10:00Z"),
        exposure("c", "variant", "2026-06-01T02:20:00Z"),
    ])
    .await;
    let window = Window::new(ts("2026-06-01T00:00:00Z"), None, ts("2026-06-01T03:00:00Z"));
    let target = Target {
        environment_key: "prod",
        feature_name: "checkout",
    };
    let query = env.app.warehouse.incremental_query(
        TimestampKind::DateTime,
        target,
        &window,
        ts("2026-06-01T02:00:00Z"),
    );
    let text = query.sql_display().to_string();
    let run = |text: String| {
        let client = env.clickhouse.clone();
        async move {
            delta(
                client
                    .query(&text)
                    .fetch_all::<TransitionRow>()
                    .await
                    .expect("incremental query"),
            )
        }
    };
    let honest = run(text.clone()).await;
    assert!(honest.complete && honest.keys_distinct, "{honest:?}");
    assert_eq!(honest.window.rows, 4);
    // Two changed identities (a returning, c new): two transitions of one identity each.
    let moved: u64 = honest.transitions.iter().map(|t| t.identities).sum();
    assert_eq!(moved, 2, "{honest:?}");

    // The grouping key is the only `cityHash64(identifier)` (the row hash has more arguments).
    assert_eq!(text.matches("cityHash64(identifier)").count(), 3, "{text}");
    let forced =
        run(text.replace("cityHash64(identifier)", "(cityHash64(identifier) % 1 + 1)")).await;
    assert!(
        !forced.keys_distinct,
        "three identities behind one key must be reported: {forced:?}"
    );
    assert_eq!(
        forced.window, honest.window,
        "the fingerprints do not depend on the key"
    );
}

#[tokio::test]
async fn a_snapshot_stored_in_between_is_not_changed_by_an_older_computation() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    step(
        &env,
        id,
        "2026-06-01T02:00:00Z",
        Mode::Full(FullReason::First),
    )
    .await;
    // This refresh loads the snapshot of 02:00 ...
    let (experiment, stale) = env.app.load(id).await.unwrap();
    // ... meanwhile another one stores 03:00 ...
    env.insert(&[exposure("u2", "control", "2026-06-01T02:30:00Z")])
        .await;
    step(&env, id, "2026-06-01T03:00:00Z", Mode::Incremental).await;
    // ... then it computes 04:00 from 02:00: the change cannot be applied to 03:00.
    env.insert(&[exposure("u3", "variant_a", "2026-06-01T03:30:00Z")])
        .await;
    env.set_now(ts("2026-06-01T04:00:00Z"));
    let (_, view, mode) = env
        .app
        .refresh_with_mode(&experiment, stale, None)
        .await
        .unwrap();
    assert_eq!(mode, Some(Mode::Full(FullReason::Race)));
    let exposures = view.exposures.unwrap();
    assert_eq!(exposures.as_of, Some(ts("2026-06-01T04:00:00Z")));
    assert_eq!(
        exposures.payload.unwrap(),
        full_payload(&env.app, id, ts("2026-06-01T04:00:00Z")).await
    );
    // A change computed against a snapshot that is older than a newer stored one gives way.
    let (experiment, stale) = env.app.load(id).await.unwrap();
    step(&env, id, "2026-06-01T06:00:00Z", Mode::Incremental).await;
    env.set_now(ts("2026-06-01T05:00:00Z"));
    let (_, view, _) = env
        .app
        .refresh_with_mode(&experiment, stale, None)
        .await
        .unwrap();
    assert_eq!(
        view.exposures.unwrap().as_of,
        Some(ts("2026-06-01T06:00:00Z"))
    );
}

#[tokio::test]
async fn concurrent_refreshes_while_events_arrive_never_double_count() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u0", "control", "2026-06-01T00:10:00Z")])
        .await;
    step(
        &env,
        id,
        "2026-06-01T01:00:00Z",
        Mode::Full(FullReason::First),
    )
    .await;
    for round in 0..4i64 {
        // Refreshes at several times, racing each other and the inserts.
        let apps: Vec<App> = (0..4)
            .map(|k| {
                let now = ts("2026-06-01T01:00:00Z") + TimeDelta::minutes(round * 40 + k * 10 + 10);
                env.app_with_clock(&[], std::sync::Arc::new(move || now))
            })
            .collect();
        let events: Vec<Ev> = (0..6)
            .map(|i| {
                let at = ts("2026-06-01T01:00:00Z") + TimeDelta::minutes(round * 40 + i * 5 + 1);
                let who = format!("u{}", (round * 7 + i) % 9);
                let variant = if (round + i) % 5 == 0 {
                    "variant_a"
                } else {
                    "control"
                };
                let mut e = exposure(&who, variant, "2026-06-01T00:00:00Z");
                e.at = at;
                e
            })
            .collect();
        let inserts = async {
            for e in &events {
                insert(&env.clickhouse, "events", std::slice::from_ref(e)).await;
            }
        };
        let refreshes = futures_util::future::join_all(apps.iter().map(|app| refresh(app, id)));
        let (_, results) = tokio::join!(inserts, refreshes);
        let as_ofs: Vec<_> = results.iter().map(|r| r.1).collect();
        let stored = env.app.load(id).await.unwrap().1.unwrap().as_of.unwrap();
        assert_eq!(
            stored,
            *as_ofs.iter().max().unwrap(),
            "as_of never moves backwards"
        );
    }
    // Whatever the races stored, the next refresh (incremental when it can prove the
    // window unchanged) ends exactly where a full one does.
    env.set_now(ts("2026-06-01T05:00:00Z"));
    let (payload, as_of, _) = refresh(&env.app, id).await;
    assert_eq!(payload, full_payload(&env.app, id, as_of).await);
    env.set_now(ts("2026-06-01T05:10:00Z"));
    let (payload, as_of, mode) = refresh(&env.app, id).await;
    assert_eq!(mode, Mode::Incremental);
    assert_eq!(payload, full_payload(&env.app, id, as_of).await);
}

#[tokio::test]
async fn incremental_on_a_distributed_table_sees_every_shard() {
    let env = TestEnv::new().await;
    let shards = Shards::new(&env).await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let app = env.another_app(&[("EXPOSURES_EVENTS_TABLE", "events_distributed")]);
    shards
        .insert(
            0,
            &[
                exposure("u1", "control", "2026-06-01T01:00:00Z"),
                exposure("u2", "control", "2026-06-01T02:00:00Z"),
            ],
        )
        .await;
    shards
        .insert(1, &[exposure("u3", "variant_a", "2026-06-01T03:00:00Z")])
        .await;
    env.set_now(ts("2026-06-01T04:00:00Z"));
    let (_, _, mode) = refresh(&app, id).await;
    assert_eq!(mode, Mode::Full(FullReason::First));
    // Each identity's new rows land on the other shard than its history.
    shards
        .insert(
            1,
            &[
                exposure("u1", "variant_a", "2026-06-01T04:10:00Z"),
                exposure("u2", "control", "2026-06-01T04:20:00Z"),
            ],
        )
        .await;
    shards
        .insert(
            0,
            &[
                exposure("u3", "variant_a", "2026-06-01T04:30:00Z"),
                exposure("u4", "control", "2026-06-01T04:40:00Z"),
            ],
        )
        .await;
    env.set_now(ts("2026-06-01T05:00:00Z"));
    let (payload, as_of, mode) = refresh(&app, id).await;
    assert_eq!(mode, Mode::Incremental);
    assert_eq!(payload, full_payload(&app, id, as_of).await);
    assert_eq!(
        payload,
        json!({"excluded_identities": 1, "timeseries": {"granularity": "hour", "points": [
            {"bucket": "2026-06-01T02:00:00Z", "new_identities": {"control": 1}},
            {"bucket": "2026-06-01T03:00:00Z", "new_identities": {"variant_a": 1}},
            {"bucket": "2026-06-01T04:00:00Z", "new_identities": {"control": 1}}
        ]}})
    );
}
