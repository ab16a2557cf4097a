//! SPEC 3.8, 3.9 and 8 on a real cluster: 2 shards × 2 replicas of Debian's
//! 18.16 as four processes with ZooKeeper (`scripts/cluster.sh`), a replicated
//! local table on every node and `Distributed` tables over it. Rows go in
//! through the `Distributed` table, so sharding and replication are real; every
//! answer is compared with one server holding the same rows.
//!
//! The tests take turns (`CLUSTER`): some kill and restart nodes.

use chrono::{DateTime, Utc};
use exposures::domain::incremental::FullReason;
use exposures::service::Mode;
use exposures::App;
use serde_json::{json, Value};

use crate::cluster_nodes::{distributed_ddl, local_table_ddl, node, node_url};
use crate::helpers::{exposure, insert, script, ts, Ev, TestEnv};
use crate::incremental::{full_payload, refresh};
use crate::incremental_property as property;
use crate::scenarios;

/// One cluster test at a time: some stop nodes the others would use.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scripts/cluster.sh <args>`.
fn cluster_sh(args: &[&str]) {
    script("cluster.sh", args);
}

/// Held by a test that kills nodes or changes the profile: if the test fails
/// half-way, `cluster.sh start` (which starts the nodes that are down and drops
/// profile overrides) leaves the cluster whole for the tests after it.
struct Recover;

impl Drop for Recover {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
            let _ = std::process::Command::new(script).arg("start").status();
        }
    }
}

/// A database of the test's own on every node, the same rows on one server,
/// and apps for both sharding keys.
pub struct ClusterEnv {
    /// PostgreSQL and the one-server ClickHouse database.
    pub env: TestEnv,
    /// The cluster database (named like the one-server database).
    pub db: String,
    /// `events`: sharded by `sipHash64(identifier)` (the sharded plan).
    pub sharded: App,
    /// `events_rand`: the same rows, sharded by `rand()` (the exact plan).
    pub exact: App,
}

impl ClusterEnv {
    /// `engine`: `MergeTree` or `ReplacingMergeTree` (replicated on the cluster).
    pub async fn new(engine: &str) -> Self {
        let env = TestEnv::new().await;
        let db = env.settings["CLICKHOUSE_DATABASE"].clone();
        let n1 = node(1);
        for sql in [
            format!("CREATE DATABASE {db} ON CLUSTER exposures_cluster"),
            local_table_ddl(&db, engine),
            distributed_ddl(&db, "events", "sipHash64(identifier)"),
            distributed_ddl(&db, "events_rand", "rand()"),
        ] {
            n1.query(&sql)
                .execute()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e} (run scripts/cluster.sh start)"));
        }
        let app = |table: &str| {
            env.another_app(&[
                ("CLICKHOUSE_URL", &node_url(1)),
                ("EXPOSURES_EVENTS_TABLE", table),
            ])
        };
        let (sharded, exact) = (app("events"), app("events_rand"));
        Self {
            env,
            db,
            sharded,
            exact,
        }
    }

    /// Inserts through the `Distributed` table (synchronously, every block kept)
    /// and into the one-server table.
    pub async fn insert(&self, events: &[Ev]) {
        let client = node(1)
            .with_database(&self.db)
            .with_setting("insert_distributed_sync", "1")
            .with_setting("insert_deduplicate", "0");
        insert(&client, "events", events).await;
        self.env.insert(events).await;
    }

    /// Runs `sql` (`{db}` is the cluster database) on node `n`.
    pub async fn on(&self, n: u8, sql: &str) {
        node(n)
            .query(&sql.replace("{db}", &self.db))
            .execute()
            .await
            .unwrap_or_else(|e| panic!("node{n}: {sql}: {e}"));
    }

    /// The nodes of the shard holding `identifier`'s rows (1 and 2, or 3 and 4).
    pub async fn shard_of(&self, identifier: &str) -> [u8; 2] {
        let rows: u64 = node(1)
            .query("SELECT toUInt64(count()) FROM ?.events_local WHERE identifier = ?")
            .bind(clickhouse::sql::Identifier(&self.db))
            .bind(identifier)
            .fetch_one()
            .await
            .expect("count on node1");
        if rows > 0 {
            [1, 2]
        } else {
            [3, 4]
        }
    }

    /// Waits until the mutations of the local table are done on every node.
    pub async fn wait_for_mutations(&self) {
        for n in 1..=4 {
            crate::incremental::wait_for_mutations(&node(n).with_database(&self.db)).await;
        }
    }

    /// Both replicas of every shard hold everything inserted so far.
    pub async fn sync_replicas(&self) {
        for n in 1..=4 {
            self.on(n, "SYSTEM SYNC REPLICA {db}.events_local").await;
        }
    }

    pub async fn drop(self) {
        self.on(
            1,
            "DROP DATABASE IF EXISTS {db} ON CLUSTER exposures_cluster",
        )
        .await;
    }
}

/// Refreshes `id` with `app` at `now`; the stored payload, mode and plan.
async fn refresh_at(env: &TestEnv, app: &App, id: i64, now: &str) -> (Value, Mode, &'static str) {
    env.set_now(ts(now));
    let (payload, _, mode) = refresh(app, id).await;
    (payload, mode, app.warehouse.plan_name())
}

#[tokio::test]
async fn every_scenario_gives_one_servers_answer_under_both_plans() {
    let _turn = CLUSTER.lock().await;
    let c = ClusterEnv::new("MergeTree").await;
    // One database for all scenarios: each gets environment keys of its own.
    let all = scenarios::all();
    let mut ids = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let events: Vec<Ev> = s
            .events
            .iter()
            .map(|e| Ev {
                environment_key: format!("s{i}_{}", e.environment_key),
                ..e.clone()
            })
            .collect();
        c.insert(&events).await;
        let id = c
            .env
            .experiment_for(
                &format!("s{i}_{}", s.environment_key),
                s.feature_name,
                Some(s.started_at),
                s.ended_at,
            )
            .await;
        ids.push(id);
    }
    for (s, id) in all.iter().zip(ids) {
        c.env.set_now(ts(s.now));
        let answers = [
            ("one server", full_payload(&c.env.app, id, ended(s)).await),
            ("sharded", full_payload(&c.sharded, id, ended(s)).await),
            ("exact", full_payload(&c.exact, id, ended(s)).await),
        ];
        for (plan, payload) in answers {
            assert_eq!(payload, s.expected, "{} ({plan})", s.name);
        }
    }
    assert_eq!(c.sharded.warehouse.plan_name(), "sharded");
    assert_eq!(c.exact.warehouse.plan_name(), "exact");
    c.drop().await;
}

fn ended(s: &scenarios::Scenario) -> DateTime<Utc> {
    ts(s.ended_at.unwrap_or(s.now))
}

#[tokio::test]
async fn incremental_refreshes_equal_full_ones_on_the_cluster() {
    let _turn = CLUSTER.lock().await;
    let c = ClusterEnv::new("MergeTree").await;
    let seed = property::seed();
    let mut modes = property::Modes::new();
    for case in 0..2 {
        property::run_case(seed.wrapping_add(case), 12, &c.env, &c.sharded, &mut modes, async |change: &property::Change| {
            c.insert(&change.inserted).await;
            if let Some(who) = &change.deleted {
                let sql = format!(
                    "ALTER TABLE {{db}}.events_local ON CLUSTER exposures_cluster DELETE WHERE identifier = '{who}'"
                );
                c.on(1, &sql).await;
                c.wait_for_mutations().await;
            }
        })
        .await;
    }
    eprintln!("property test (cluster): 2 cases x 12 steps (EXPOSURES_PROPERTY_SEED={seed}), modes {modes:?}");
    assert!(modes.contains_key("incremental"), "{modes:?}");
    assert_eq!(c.sharded.warehouse.plan_name(), "sharded");
    c.drop().await;
}

#[tokio::test]
async fn api_and_sweep_on_the_cluster_answer_as_one_server() {
    let _turn = CLUSTER.lock().await;
    let c = ClusterEnv::new("MergeTree").await;
    let events: Vec<Ev> = (0..40)
        .map(|i| {
            let variant = if i % 3 == 0 { "variant_a" } else { "control" };
            exposure(
                &format!("u{i}"),
                variant,
                &format!("2026-06-01T{:02}:10:00Z", i % 10),
            )
        })
        .chain([exposure("u1", "variant_a", "2026-06-01T11:00:00Z")])
        .collect();
    c.insert(&events).await;
    let id = c.env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    c.env.set_now(ts("2026-06-01T12:00:00Z"));
    let one = exposures::handler::handle(&c.env.app, json!({"experiment_id": id}), None)
        .await
        .expect("one server");
    let post = json!({"version": "2.0", "routeKey": "POST /experiments/{id}/exposures/refresh",
        "rawPath": format!("/experiments/{id}/exposures/refresh"),
        "requestContext": {"http": {"method": "POST", "path": format!("/experiments/{id}/exposures/refresh")}},
        "pathParameters": {"id": id.to_string()}});
    let answer = exposures::handler::handle(&c.sharded, post, None)
        .await
        .expect("API refresh");
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["exposures"]["payload"], one["exposures"]["payload"]);
    // The sweep refreshes it again later, incrementally, over the cluster.
    c.insert(&[exposure("u99", "control", "2026-06-01T12:30:00Z")])
        .await;
    c.env.set_now(ts("2026-06-01T13:00:00Z"));
    let sweep = exposures::handler::handle(&c.sharded, json!({"action": "refresh_due"}), None)
        .await
        .expect("sweep");
    assert_eq!(sweep["refreshed"], json!([id]), "{sweep}");
    let one = full_payload(&c.env.app, id, ts("2026-06-01T13:00:00Z")).await;
    assert_eq!(c.env.stored(id).await["payload"], one);
    c.drop().await;
}

#[tokio::test]
async fn a_value_updated_on_a_shard_is_seen_by_the_next_refresh() {
    let _turn = CLUSTER.lock().await;
    let c = ClusterEnv::new("MergeTree").await;
    c.insert(&[
        exposure("u1", "control", "2026-06-01T01:00:00Z"),
        exposure("u2", "control", "2026-06-01T02:00:00Z"),
        exposure("u3", "variant_a", "2026-06-01T03:00:00Z"),
    ])
    .await;
    let id = c.env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    refresh_at(&c.env, &c.sharded, id, "2026-06-01T04:00:00Z").await;
    // On the shard's local table, not through the Distributed one (which cannot):
    // the server the function talks to does not list this mutation.
    let [first, _] = c.shard_of("u2").await;
    c.on(
        first,
        "ALTER TABLE {db}.events_local UPDATE value = 'variant_a' WHERE identifier = 'u2'",
    )
    .await;
    c.env
        .clickhouse
        .query("ALTER TABLE events UPDATE value = 'variant_a' WHERE identifier = 'u2'")
        .execute()
        .await
        .unwrap();
    c.wait_for_mutations().await;
    crate::incremental::wait_for_mutations(&c.env.clickhouse).await;
    c.sync_replicas().await;
    let (payload, mode, plan) = refresh_at(&c.env, &c.sharded, id, "2026-06-01T05:00:00Z").await;
    assert_eq!(mode, Mode::Full(FullReason::ChangedWindow));
    assert_eq!(plan, "sharded");
    let one = full_payload(&c.env.app, id, ts("2026-06-01T05:00:00Z")).await;
    assert_eq!(payload, one);
    assert_eq!(
        payload["timeseries"]["points"][1]["new_identities"],
        json!({"variant_a": 1}),
        "{payload}"
    );
    c.drop().await;
}

/// The merged duplicate and the late event have the same timestamp, so the
/// window's row count and timestamp sum do not change; its content does.
async fn merged_duplicate_and_late_event(
    env: &TestEnv,
    app: &App,
    insert: impl AsyncFn(&[Ev]),
    optimize: impl AsyncFn(),
) {
    let duplicate = exposure("u1", "control", "2026-06-01T01:00:00Z");
    insert(&[
        duplicate.clone(),
        exposure("u3", "variant_a", "2026-06-01T01:30:00Z"),
    ])
    .await;
    insert(&[duplicate]).await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let (before, _, _) = refresh_at(env, app, id, "2026-06-01T02:00:00Z").await;
    optimize().await;
    insert(&[exposure("u2", "variant_a", "2026-06-01T01:00:00Z")]).await;
    let (payload, mode, _) = refresh_at(env, app, id, "2026-06-01T03:00:00Z").await;
    assert_eq!(
        mode,
        Mode::Full(FullReason::ChangedWindow),
        "{before} -> {payload}"
    );
    assert_eq!(
        payload["timeseries"]["points"][0]["new_identities"],
        json!({"control": 1, "variant_a": 2}),
        "u2 counted: {payload}"
    );
}

#[tokio::test]
async fn a_merged_duplicate_and_a_late_event_on_one_server() {
    let env = TestEnv::new().await;
    env.clickhouse
        .query(
            &include_str!("../../migrations/clickhouse/events_clickhouse_18.sql")
                .replace("IF NOT EXISTS events", "events_replacing")
                .replace("ENGINE = MergeTree", "ENGINE = ReplacingMergeTree"),
        )
        .execute()
        .await
        .unwrap();
    let app = env.another_app(&[("EXPOSURES_EVENTS_TABLE", "events_replacing")]);
    merged_duplicate_and_late_event(
        &env,
        &app,
        async |events| insert(&env.clickhouse, "events_replacing", events).await,
        async || {
            env.clickhouse
                .query("OPTIMIZE TABLE events_replacing FINAL")
                .execute()
                .await
                .unwrap()
        },
    )
    .await;
}

#[tokio::test]
async fn a_merged_duplicate_and_a_late_event_on_the_cluster() {
    let _turn = CLUSTER.lock().await;
    let c = ClusterEnv::new("ReplacingMergeTree").await;
    merged_duplicate_and_late_event(
        &c.env,
        &c.sharded,
        async |events| c.insert(events).await,
        async || {
            c.sync_replicas().await;
            let [first, _] = c.shard_of("u1").await;
            c.on(first, "OPTIMIZE TABLE {db}.events_local FINAL").await;
            c.sync_replicas().await;
        },
    )
    .await;
    c.drop().await;
}

/// A window large enough that a refresh's queries on the shards last a while
/// (so a node can be killed during one): `identities` identities with a few
/// exposures each, inserted on the server side through the `Distributed` table.
async fn load(c: &ClusterEnv, identities: u64) {
    let sql = format!(
        "INSERT INTO {{db}}.events SELECT 'prod', '$flag_exposure', 'checkout', \
         concat('u', toString(number % {identities})), \
         if(cityHash64(number % {identities}) % 3 = 0, 'variant_a', 'control'), \
         toDateTime('2026-06-01 00:00:00') + (number * 7919) % 86400 \
         FROM system.numbers LIMIT {}",
        identities * 4
    );
    node(1)
        .with_setting("insert_distributed_sync", "1")
        .query(&sql.replace("{db}", &c.db))
        .execute()
        .await
        .expect("load the cluster");
    c.sync_replicas().await;
}

/// Waits until one of `nodes` runs a query sent by another server (a shard's
/// part of a refresh) and returns it. Which replica a server picks depends on
/// the errors it saw lately, so the test looks at both.
async fn secondary_query_on(nodes: [u8; 2]) -> u8 {
    for _ in 0..4000 {
        for n in nodes {
            let running: u64 = node(n)
                .query("SELECT toUInt64(count()) FROM system.processes WHERE is_initial_query = 0 AND query LIKE '%sipHash128%'")
                .fetch_one()
                .await
                .unwrap_or(0);
            if running > 0 {
                return n;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("no shard query appeared on {nodes:?}");
}

#[tokio::test]
async fn one_replica_of_each_shard_down_before_and_during_a_refresh() {
    let _turn = CLUSTER.lock().await;
    let _recover = Recover;
    let c = ClusterEnv::new("MergeTree").await;
    load(&c, 300_000).await;
    let now = "2026-06-02T00:00:00Z";
    let before = c
        .env
        .experiment(Some("2026-06-01T00:00:00Z"), Some(now))
        .await;
    let during = c
        .env
        .experiment(Some("2026-06-01T00:00:00Z"), Some(now))
        .await;
    // With every node up, under both plans (the load went to the cluster only).
    let expected = full_payload(&c.exact, before, ts(now)).await;
    assert_eq!(full_payload(&c.sharded, before, ts(now)).await, expected);

    // Before: node2 (shard 1) and node3 (shard 2, the replica read first) are gone.
    cluster_sh(&["kill", "2"]);
    cluster_sh(&["kill", "3"]);
    let (payload, _, plan) = refresh_at(&c.env, &c.sharded, before, now).await;
    assert_eq!(plan, "sharded");
    assert_eq!(payload, expected, "exact through the other replicas");
    cluster_sh(&["restart", "2"]);
    cluster_sh(&["restart", "3"]);

    // During: the replica computing shard 2's part dies mid-query, and node2;
    // the refresh tries again (Code 32 or a network error is transient) and
    // reads the other replica.
    let refreshing = {
        let app = c.env.another_app(&[
            ("CLICKHOUSE_URL", &node_url(1)),
            ("EXPOSURES_EVENTS_TABLE", "events"),
        ]);
        tokio::spawn(async move {
            let (experiment, stored) = app.load(during).await.expect("load");
            app.refresh_with_mode(&experiment, stored, None).await
        })
    };
    let busy = secondary_query_on([3, 4]).await;
    cluster_sh(&["kill", &busy.to_string()]);
    cluster_sh(&["kill", "2"]);
    let (_, view, mode) = refreshing
        .await
        .unwrap()
        .expect("the refresh survives the loss of a replica per shard");
    assert!(matches!(mode, Some(Mode::Full(_))), "{mode:?}");
    // It was during: node1 saw a refresh query of this database fail.
    node(1).query("SYSTEM FLUSH LOGS").execute().await.unwrap();
    let failed: Vec<String> = node(1)
        .query("SELECT exception FROM system.query_log WHERE type = 4 AND is_initial_query AND query LIKE '%sipHash128%' AND query LIKE ?")
        .bind(format!("%{}%", c.db))
        .fetch_all()
        .await
        .unwrap();
    eprintln!("cluster: the refresh query that lost its replica failed with {failed:?}");
    assert!(!failed.is_empty(), "the replica died after the refresh");
    assert_eq!(view.exposures.unwrap().payload.unwrap(), expected);
    cluster_sh(&["restart", "2"]);
    cluster_sh(&["restart", &busy.to_string()]);
    c.drop().await;
}

#[tokio::test]
async fn a_shard_down_fails_the_refresh_whatever_the_profile_says() {
    let _turn = CLUSTER.lock().await;
    let _recover = Recover;
    let c = ClusterEnv::new("MergeTree").await;
    let events: Vec<Ev> = (0..50)
        .map(|i| exposure(&format!("u{i}"), "control", "2026-06-01T01:00:00Z"))
        .collect();
    c.insert(&events).await;
    let id = c.env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let (good, _, _) = refresh_at(&c.env, &c.sharded, id, "2026-06-01T02:00:00Z").await;
    assert_eq!(
        good["timeseries"]["points"][0]["new_identities"]["control"],
        50
    );
    c.insert(&[exposure("u77", "variant_a", "2026-06-01T02:10:00Z")])
        .await;

    cluster_sh(&["kill", "3"]);
    cluster_sh(&["kill", "4"]);
    // First under the default profile (0, as cluster.sh start leaves it), then 1.
    // The default is not written again: a second write of the override file in
    // the same second may be missed by 18.16's config reloader.
    for profile in ["0", "1"] {
        if profile == "1" {
            cluster_sh(&["profile", "skip_unavailable_shards", profile]);
            // The server's profile really would answer without the shard...
            let partial: u64 = node(1)
                .query("SELECT toUInt64(count()) FROM ?.events")
                .bind(clickhouse::sql::Identifier(&c.db))
                .fetch_one()
                .await
                .expect("a partial count under the profile");
            assert!(partial < 51, "{partial}");
        }
        // ...the refresh does not: it fails, stamps the failure, keeps the payload.
        c.env.set_now(ts("2026-06-01T03:00:00Z"));
        let error = exposures::handler::handle(&c.sharded, json!({"experiment_id": id}), None)
            .await
            .expect_err("no snapshot without a shard");
        assert!(error.to_string().contains("ClickHouse"), "{error}");
        let stored = c.env.stored(id).await;
        assert_eq!(
            stored["payload"], good,
            "profile {profile}: previous payload kept"
        );
        assert_ne!(
            stored["last_error_at"],
            Value::Null,
            "profile {profile}: failure stamped"
        );
    }
    cluster_sh(&["profile", "--reset"]);
    cluster_sh(&["restart", "3"]);
    cluster_sh(&["restart", "4"]);
    let (after, _, _) = refresh_at(&c.env, &c.sharded, id, "2026-06-01T04:00:00Z").await;
    assert_eq!(
        after,
        full_payload(&c.env.app, id, ts("2026-06-01T04:00:00Z")).await
    );
    c.drop().await;
}
