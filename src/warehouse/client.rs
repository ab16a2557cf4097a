//! The ClickHouse client: built once per container, with the settings every
//! query carries, its own timeout, and TLS trusting an extra CA bundle.

use std::time::Duration;

use tokio::sync::OnceCell;

use super::error::WarehouseError;
use super::plan::Plan;
use super::sql::TimestampKind;
use crate::config::{Config, ConfigError};

/// Memory settings sent with every query (README "Performance", issue 5).
///
/// A refresh keeps one aggregation state per identity, so its memory grows with
/// the identities in the window (on 2 threads, 2 million take 0.45 GiB on 18.16
/// and 1.2 GiB on a current release). Past
/// `max_bytes_before_external_group_by` the server writes the partial
/// aggregation to its temporary path and merges it from there (external
/// aggregation), so the peak stays near that threshold however large the window;
/// `max_memory_usage` caps one refresh, so it cannot take the server's memory.
/// Both settings exist on 18.16 and on current releases. Measured on 18.16 with
/// 2 cores: 100 million events of 10 million identities peak at 2.0 GiB with a
/// few spilled parts and finish in 28 s (2.3 GiB without spilling). A
/// 2-million-identity window stays below the threshold and never spills.
pub const MEMORY_SETTINGS: [(&str, &str); 2] = [
    // 2 GiB: spill the aggregation to disk beyond this.
    ("max_bytes_before_external_group_by", "2147483648"),
    // 4 GiB: hard cap of one refresh query.
    ("max_memory_usage", "4294967296"),
];

/// Settings for a `Distributed` events table, sent with every query whatever
/// the server's profile says (README "Running on a cluster"); on one server
/// they change nothing.
pub const CLUSTER_SETTINGS: [(&str, &str); 5] = [
    // A shard that cannot be reached fails the query: never a partial answer.
    ("skip_unavailable_shards", "0"),
    // The server's own shard is read by a query of its own, like every other
    // shard's, so the initial query holds only the shards' small answers.
    ("prefer_localhost_replica", "0"),
    // The first live replica in the cluster's order: consecutive refreshes read
    // the same replica, so a lagging one cannot make the window's fingerprint
    // flip between refreshes.
    ("load_balancing", "in_order"),
    // A replica more than 5 minutes behind is skipped for one that is not; when
    // every replica of a shard is behind, the refresh fails (Code 369, retried)
    // rather than store a snapshot that misses rows.
    ("max_replica_delay_for_distributed_queries", "300"),
    ("fallback_to_stale_replicas_for_distributed_queries", "0"),
];

/// The ClickHouse side: a client built once per container, and the query.
pub struct Warehouse {
    pub(super) client: clickhouse::Client,
    pub(super) table: String,
    timeout: Duration,
    timestamp_kind: OnceCell<TimestampKind>,
    pub(super) plan: OnceCell<Plan>,
}

impl Warehouse {
    /// Builds the client; no connection is made until the first query. With
    /// `CLICKHOUSE_CA_FILE`, `https://` trusts that bundle besides the Mozilla roots.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let timeout = config.query_timeout;
        let client = match &config.clickhouse_ca_file {
            None => clickhouse::Client::default(),
            Some(path) => https_client(path)?,
        };
        let client = client
            .with_url(&config.clickhouse_url)
            .with_user(&config.clickhouse_user)
            .with_password(config.clickhouse_password.expose())
            .with_database(&config.clickhouse_database)
            // Old servers cannot answer the schema check (RowBinaryWithNamesAndTypes).
            .with_validation(false)
            // The server stops work it cannot finish in time instead of running on unobserved.
            .with_setting("max_execution_time", timeout.as_secs().to_string())
            // The refresh query is the product's whole cost: keep each one in system.query_log
            // (time, memory, rows read), also on servers that do not log by default (18.x).
            .with_setting("log_queries", "1");
        let client = CLUSTER_SETTINGS
            .iter()
            .fold(client, |client, (name, value)| {
                client.with_setting(*name, *value)
            });
        let client = MEMORY_SETTINGS
            .iter()
            .fold(client, |client, (name, value)| {
                client.with_setting(*name, *value)
            });
        Ok(Self {
            client,
            table: config.events_table.clone(),
            timeout,
            timestamp_kind: OnceCell::new(),
            plan: OnceCell::new(),
        })
    }
    /// Looked up once per container: the column type does not change under a running function.
    pub(super) async fn timestamp_kind(&self) -> Result<TimestampKind, WarehouseError> {
        self.timestamp_kind
            .get_or_try_init(|| async {
                let type_name = self
                    .with_timeout(
                        self.client
                            .query(
                                "SELECT type FROM system.columns \
                                 WHERE database = currentDatabase() AND table = ? AND name = 'timestamp'",
                            )
                            .bind(&self.table)
                            .fetch_optional::<String>(),
                    )
                    .await?;
                let table_error = |reason: String| WarehouseError::Table {
                    table: self.table.clone(),
                    reason,
                };
                let type_name =
                    type_name.ok_or_else(|| table_error("no such table, or it has no `timestamp` column".into()))?;
                TimestampKind::from_type_name(&type_name)
                    .ok_or_else(|| table_error(format!("`timestamp` is {type_name}, expected DateTime or DateTime64")))
            })
            .await
            .copied()
    }

    pub(super) async fn with_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, WarehouseError> {
        // A little slack so the server's own max_execution_time error usually wins.
        match tokio::time::timeout(self.timeout + Duration::from_secs(2), fut).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(WarehouseError::Timeout(self.timeout)),
        }
    }
}

/// The HTTP(S) client the `clickhouse` crate builds by default (rustls with ring,
/// keep-alive, idle connections dropped before the server's 3 s), trusting
/// `ca_file` besides the Mozilla roots, host names verified.
fn https_client(ca_file: &str) -> Result<clickhouse::Client, ConfigError> {
    const VARIABLE: &str = "CLICKHOUSE_CA_FILE";
    let roots = crate::tls::roots(Some(ca_file), VARIABLE)?;
    let tls = crate::tls::client_config(crate::conninfo::SslMode::VerifyFull, roots, VARIABLE)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(https);
    Ok(clickhouse::Client::with_http_client(http_client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_carries_the_memory_settings_and_is_logged() {
        let config = Config::from_lookup(|_| None).unwrap();
        let warehouse = Warehouse::new(&config).unwrap();
        for (name, value) in MEMORY_SETTINGS {
            assert_eq!(warehouse.client.get_setting(name), Some(value), "{name}");
        }
        assert_eq!(warehouse.client.get_setting("log_queries"), Some("1"));
        let threshold: u64 = MEMORY_SETTINGS[0].1.parse().unwrap();
        let cap: u64 = MEMORY_SETTINGS[1].1.parse().unwrap();
        assert!(threshold < cap, "spilling must start below the cap");
    }
}
