//! SPEC 8: the same function and query on a `Distributed` table whose rows are
//! split between two shards (cluster `exposures_two_shards` of scripts/servers.sh:
//! one database per shard on the test server).

use serde_json::json;

use crate::helpers::{clickhouse_url, exposure, insert, Ev, TestEnv};

const SHARDS: [&str; 2] = ["exposures_shard_a", "exposures_shard_b"];

/// A table of the test's own name in each shard's database, and `events_distributed`
/// over them in the test database.
pub struct Shards {
    server: clickhouse::Client,
    local: String,
}

impl Shards {
    pub async fn new(env: &TestEnv) -> Self {
        let server = clickhouse::Client::default()
            .with_url(clickhouse_url())
            .with_validation(false);
        let local = format!("events_{}", env.settings["CLICKHOUSE_DATABASE"]);
        let ddl = include_str!("../../migrations/clickhouse/events_clickhouse_18.sql");
        for shard in SHARDS {
            let client = server.clone().with_database(shard);
            server
                .query(&format!("CREATE DATABASE IF NOT EXISTS {shard}"))
                .execute()
                .await
                .expect("create shard database");
            client
                .query(&ddl.replace("IF NOT EXISTS events", &local))
                .execute()
                .await
                .expect("create shard table");
        }
        env.clickhouse
            .query(&format!(
                "CREATE TABLE events_distributed AS {}.{local} \
                 ENGINE = Distributed(exposures_two_shards, '', {local})",
                SHARDS[0]
            ))
            .execute()
            .await
            .expect("create Distributed table (servers.sh defines exposures_two_shards)");
        Self { server, local }
    }

    /// Inserts `events` into shard `index` (0 or 1).
    pub async fn insert(&self, index: usize, events: &[Ev]) {
        let client = self.server.clone().with_database(SHARDS[index]);
        insert(&client, &self.local, events).await;
    }
}

#[tokio::test]
async fn refresh_reads_a_distributed_table_split_between_shards() {
    let env = TestEnv::new().await;
    let shards = Shards::new(&env).await;

    // Every identity's rows are split between the shards, so each answer needs the merge.
    let shard_a = [
        exposure("u1", "control", "2026-06-01T10:00:00Z"),
        exposure("u2", "control", "2026-06-02T10:00:00Z"),
        exposure("u3", "variant_a", "2026-06-02T10:00:00Z"),
    ];
    let shard_b = [
        // u1 first seen on shard a; a later duplicate here changes nothing.
        exposure("u1", "control", "2026-06-03T10:00:00Z"),
        // u2's first exposure is on this shard.
        exposure("u2", "control", "2026-06-01T23:00:00Z"),
        // u3 saw another variant on this shard: quarantined.
        exposure("u3", "variant_b", "2026-06-03T10:00:00Z"),
        exposure("u4", "variant_a", "2026-06-03T12:00:00Z"),
    ];
    shards.insert(0, &shard_a).await;
    shards.insert(1, &shard_b).await;

    let id = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-05T00:00:00Z"))
        .await;
    let app = env.another_app(&[("EXPOSURES_EVENTS_TABLE", "events_distributed")]);
    let answer = exposures::handler::handle(&app, json!({"experiment_id": id}), None)
        .await
        .expect("refresh over the Distributed table");
    assert_eq!(
        answer["exposures"]["payload"],
        json!({
            "excluded_identities": 1,
            "timeseries": {"granularity": "day", "points": [
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 2}},
                {"bucket": "2026-06-03T00:00:00Z", "new_identities": {"variant_a": 1}},
            ]}
        }),
        "{answer:#}"
    );
}
