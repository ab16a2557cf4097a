//! Storing snapshots and migrations against the real PostgreSQL.

use serde_json::{json, Value};

use crate::helpers::{exposure, ts, Options, TestEnv};

#[tokio::test]
async fn as_of_never_moves_backwards() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let newer = json!({"newer": true});
    let older = json!({"older": true});

    let stored = env
        .app
        .store
        .store_payload(id, ts("2026-06-01T12:00:00Z"), &newer)
        .await
        .unwrap();
    assert_eq!(stored.payload, Some(newer.clone()));

    // A refresh that started earlier (older window) commits after the newer one.
    let stored = env
        .app
        .store
        .store_payload(id, ts("2026-06-01T11:00:00Z"), &older)
        .await
        .unwrap();
    assert_eq!(
        stored.as_of,
        Some(ts("2026-06-01T12:00:00Z")),
        "returns what is stored"
    );
    assert_eq!(stored.payload, Some(newer.clone()));
    let row = env.stored(id).await;
    assert_eq!(row["payload"], newer);

    // Its failure is not stamped over the newer good snapshot either.
    env.app
        .store
        .store_failure(id, ts("2026-06-01T11:30:00Z"))
        .await
        .unwrap();
    assert_eq!(env.stored(id).await["last_error_at"], Value::Null);
    // A failure of a newer refresh is.
    env.app
        .store
        .store_failure(id, ts("2026-06-01T13:00:00Z"))
        .await
        .unwrap();
    assert_ne!(env.stored(id).await["last_error_at"], Value::Null);
    assert_eq!(env.stored(id).await["payload"], newer);
}

#[tokio::test]
async fn an_older_refresh_through_the_handler_returns_the_newer_snapshot() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    env.app
        .store
        .store_payload(id, ts("2026-06-01T12:00:00Z"), &json!({"stored": "newer"}))
        .await
        .unwrap();
    env.set_now(ts("2026-06-01T06:00:00Z"));
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(answer["exposures"]["as_of"], "2026-06-01T12:00:00Z");
    assert_eq!(answer["exposures"]["payload"], json!({"stored": "newer"}));
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let env = TestEnv::new().await;
    // TestEnv already migrated once.
    let answer = env.invoke(json!({"action": "migrate"})).await.unwrap();
    assert_eq!(answer, json!({"migrated": []}));
    let tables: i64 = env
        .pg
        .query_one(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_name IN ('experiments', 'experiment_exposures', 'exposures_schema_migrations')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
}

#[tokio::test]
async fn migrate_applies_to_an_empty_database_concurrently() {
    let env = TestEnv::new().await;
    env.pg
        .batch_execute("DROP TABLE experiments, experiment_exposures, exposures_schema_migrations")
        .await
        .unwrap();
    let apps: Vec<_> = (0..4).map(|_| env.another_app(&[])).collect();
    let results = futures_util::future::join_all(
        apps.iter()
            .map(|app| exposures::handler::handle(app, json!({"action": "migrate"}), None)),
    )
    .await;
    let applied: Vec<usize> = results
        .into_iter()
        .map(|r| {
            r.expect("migrate succeeds")["migrated"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(
        applied.iter().sum::<usize>(),
        exposures::store::MIGRATIONS.len(),
        "each migration applied exactly once: {applied:?}"
    );
}

#[tokio::test]
async fn experiments_relation_may_be_a_view() {
    let env = TestEnv::with(Options {
        settings: vec![(
            "EXPOSURES_EXPERIMENTS_RELATION",
            "product.flag_experiments".into(),
        )],
        ..Options::default()
    })
    .await;
    env.pg
        .batch_execute(
            "CREATE SCHEMA product;
             CREATE TABLE product.tests (test_id int PRIMARY KEY, env text, flag text, state text,
                                         began timestamptz, finished timestamptz);
             INSERT INTO product.tests VALUES (31, 'prod', 'checkout', 'running', '2026-06-01T00:00:00Z', NULL);
             CREATE VIEW product.flag_experiments AS
               SELECT test_id AS id, env AS environment_key, flag AS feature_name, state AS status,
                      began AS started_at, finished AS ended_at
               FROM product.tests;",
        )
        .await
        .unwrap();
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let answer = env.invoke(json!({"experiment_id": 31})).await.unwrap();
    assert_eq!(answer["outcome"], "refreshed");
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["points"][0]["new_identities"],
        json!({"control": 1})
    );
}

#[tokio::test]
async fn malformed_rows_in_an_experiments_view_fail_cleanly() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_EXPERIMENTS_RELATION", "loose_experiments".into())],
        ..Options::default()
    })
    .await;
    env.pg
        .batch_execute(
            "CREATE VIEW loose_experiments AS
               SELECT * FROM (VALUES
                 (1::bigint, 'prod'::text, 'checkout'::text, 'running'::text, '2026-06-01T00:00:00Z'::timestamptz, NULL::timestamptz),
                 (2, NULL, 'checkout', 'running', '2026-06-01T00:00:00Z', NULL),
                 (NULL, 'prod', 'checkout', 'running', '2026-06-01T00:00:00Z', NULL)
               ) AS t (id, environment_key, feature_name, status, started_at, ended_at);",
        )
        .await
        .unwrap();
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let err = env.invoke(json!({"experiment_id": 2})).await.unwrap_err();
    assert_eq!(err.code(), "database_unavailable");
    assert!(err.to_string().contains("environment_key"), "{err}");
    let report = env.invoke(json!({"action": "refresh_due"})).await.unwrap();
    assert_eq!(
        report,
        json!({"refreshed": [1], "failed": [2], "skipped": []})
    );
}
