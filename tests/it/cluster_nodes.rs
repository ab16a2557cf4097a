//! The 2 × 2 cluster of `scripts/cluster.sh` as the cluster tests and the
//! cluster benchmark (`benches/query.rs` includes this file) reach it.

/// Node `n`'s HTTP URL (`scripts/cluster.sh env`).
pub fn node_url(n: u8) -> String {
    std::env::var(format!("EXPOSURES_TEST_CLUSTER_NODE{n}_URL"))
        .unwrap_or_else(|_| format!("http://127.0.0.1:{}", 18200 + u16::from(n)))
}

/// A client of node `n`.
pub fn node(n: u8) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(node_url(n))
        .with_validation(false)
}

/// `{db}.events_local` on every node: the 18.16 layout
/// (`migrations/clickhouse/events_clickhouse_18.sql`) under `Replicated{engine}`.
pub fn local_table_ddl(db: &str, engine: &str) -> String {
    include_str!("../../migrations/clickhouse/events_clickhouse_18.sql")
        .replace(
            "CREATE TABLE IF NOT EXISTS events",
            &format!("CREATE TABLE IF NOT EXISTS {db}.events_local ON CLUSTER exposures_cluster"),
        )
        .replace(
            "ENGINE = MergeTree",
            &format!(
                "ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{db}/events_local', '{{replica}}')"
            ),
        )
}

/// `{db}.{table}` on every node: a `Distributed` table over `{db}.events_local` sharded by `key`.
pub fn distributed_ddl(db: &str, table: &str, key: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER exposures_cluster AS {db}.events_local \
         ENGINE = Distributed(exposures_cluster, {db}, events_local, {key})"
    )
}
