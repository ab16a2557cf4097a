//! PostgreSQL: experiments (read only) and exposure snapshots (owned), SPEC 2.2 and 2.3.
//!
//! Every write is one statement whose `WHERE` carries the rule it enforces, so
//! concurrent refreshes need no locks held across the ClickHouse query.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::Row;

use crate::config::{Config, ConfigError};
use crate::health::Weights;
use crate::tls;
use crate::warehouse::Fingerprint;

/// The migrations, in order; applied by `{"action": "migrate"}`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_create_experiments",
        include_str!("../migrations/0001_create_experiments.sql"),
    ),
    (
        "0002_create_experiment_exposures",
        include_str!("../migrations/0002_create_experiment_exposures.sql"),
    ),
    (
        "0003_snapshot_window_fingerprint",
        include_str!("../migrations/0003_snapshot_window_fingerprint.sql"),
    ),
];

/// PostgreSQL could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had.
    #[error("no PostgreSQL connection: {}", crate::error::with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL statement failed: {}", crate::error::with_causes(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A row of the experiments relation cannot be used (e.g. a NULL key).
    #[error("experiments relation {relation}: {reason}")]
    BadRow {
        /// The configured relation.
        relation: String,
        /// What is wrong, naming the column.
        reason: String,
    },
}

impl DbError {
    /// True when the connection itself failed (reset, closed, server shutting
    /// down or restarting), not the statement: a fresh connection may succeed.
    pub fn is_connection_lost(&self) -> bool {
        fn lost(e: &tokio_postgres::Error) -> bool {
            if e.is_closed() {
                return true;
            }
            if let Some(code) = e.code() {
                // Class 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now.
                let code = code.code();
                return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
            }
            std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
        match self {
            DbError::Query(e) => lost(e),
            DbError::Pool(deadpool_postgres::PoolError::Backend(e)) => lost(e),
            _ => false,
        }
    }
}

/// An experiment, as read from the experiments relation.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Its id.
    pub id: i64,
    /// Environment the exposures come from.
    pub environment_key: String,
    /// The flag.
    pub feature_name: String,
    /// `created`, `running`, `paused` or `completed`.
    pub status: String,
    /// Set on first start; `None` means not started.
    pub started_at: Option<DateTime<Utc>>,
    /// Set on completion.
    pub ended_at: Option<DateTime<Utc>>,
    /// The intended split, for the health checks; `None` when the relation has
    /// no such column, the value is null, or it is malformed (logged).
    pub variant_weights: Option<Weights>,
}

/// The stored row of `experiment_exposures`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSnapshot {
    /// End of the stored payload's window.
    pub as_of: Option<DateTime<Utc>>,
    /// The last good summary.
    pub payload: Option<Value>,
    /// When the last refresh failed, if it did after the last good one.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When an API refresh was last accepted.
    pub refresh_requested_at: Option<DateTime<Utc>>,
    /// Last write of any kind.
    pub updated_at: DateTime<Utc>,
    /// What the stored payload's window held, when known (an incremental refresh starts from it).
    pub window: Option<StoredWindow>,
}

/// The window a stored payload counts, as an incremental refresh needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWindow {
    /// The `started_at` it was computed from.
    pub start: DateTime<Utc>,
    /// What it held.
    pub fingerprint: Fingerprint,
}

/// A good refresh to store.
#[derive(Debug, Clone, Copy)]
pub struct Good<'a> {
    /// End of its window.
    pub as_of: DateTime<Utc>,
    /// The payload.
    pub payload: &'a Value,
    /// Its window; `None` leaves the next refresh no base to start from.
    pub window: Option<StoredWindow>,
    /// For an incremental result: the `as_of` of the snapshot it changes. It is
    /// stored only if that snapshot is still the stored one (compare-and-set).
    pub base: Option<DateTime<Utc>>,
}

const SNAPSHOT_COLUMNS: &str = "as_of, payload, last_error_at, refresh_requested_at, updated_at, \
                                window_start, window_rows, window_checksum";

impl StoredSnapshot {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            as_of: row.try_get("as_of")?,
            payload: row.try_get("payload")?,
            last_error_at: row.try_get("last_error_at")?,
            refresh_requested_at: row.try_get("refresh_requested_at")?,
            updated_at: row.try_get("updated_at")?,
            window: match (
                row.try_get::<_, Option<DateTime<Utc>>>("window_start")?,
                row.try_get::<_, Option<i64>>("window_rows")?,
                row.try_get::<_, Option<i64>>("window_checksum")?,
            ) {
                (Some(start), Some(rows), Some(checksum)) => Some(StoredWindow {
                    start,
                    fingerprint: Fingerprint {
                        rows: rows as u64,
                        checksum: checksum as u64,
                    },
                }),
                _ => None,
            },
        })
    }
}

/// Quotes a possibly schema-qualified name (`public.experiments`) for SQL.
fn quote_relation(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Connection pool plus the statements the function runs.
pub struct Store {
    pool: Pool,
    experiments: String,
}

impl Store {
    /// Builds the pool; connections are opened on first use. TLS is negotiated
    /// and verified as the connection string's `sslmode` says, as libpq does
    /// (module [`tls`]), trusting the Mozilla roots plus `DATABASE_CA_FILE`.
    pub fn new(config: &Config, max_connections: usize) -> Result<Self, ConfigError> {
        let (pg, mode) = connection_config(config.database_url.expose())?;
        let roots = tls::roots(config.database_ca_file.as_deref(), "DATABASE_CA_FILE")?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(
            mode,
            roots,
            "DATABASE_CA_FILE",
        )?);
        tracing::debug!(sslmode = mode.as_str(), "PostgreSQL TLS");
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                // A pooled connection is checked with an empty statement before use, so
                // one that died while the container was frozen (server restarted,
                // failover, idle timeout) is replaced instead of failing the invocation.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| ConfigError {
                variable: "DATABASE_URL",
                reason: format!("cannot build a connection pool ({e})"),
            })?;
        Ok(Self {
            pool,
            experiments: quote_relation(&config.experiments_relation),
        })
    }

    /// Applies the migrations not yet applied, in one transaction under an
    /// advisory lock, so concurrent `migrate` invocations queue up and a failed
    /// one leaves nothing half done. Returns the names it applied.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, DbError> {
        // Safe to repeat: a transaction whose commit was lost finds its work done.
        self.retry_once(Self::migrate_on).await
    }

    async fn migrate_on(mut client: Object) -> Result<Vec<&'static str>, DbError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7215804162)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS exposures_schema_migrations (
                 name text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM exposures_schema_migrations WHERE name = $1",
                    &[name],
                )
                .await?
                .is_some();
            if !done {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO exposures_schema_migrations (name) VALUES ($1)",
                    &[name],
                )
                .await?;
                applied.push(*name);
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The experiment and its stored snapshot, in one round trip.
    pub async fn load(
        &self,
        id: i64,
    ) -> Result<Option<(Experiment, Option<StoredSnapshot>)>, DbError> {
        let sql = format!(
            "SELECT e.id::bigint AS id, e.environment_key::text AS environment_key,
                    e.feature_name::text AS feature_name, e.status::text AS status,
                    e.started_at, e.ended_at,
                    -- Through the row as JSON: a relation without the column gives NULL.
                    -- As text, so a number serde_json cannot hold (1e400) is malformed, not an error.
                    (to_jsonb(e) -> 'variant_weights')::text AS variant_weights,
                    x.experiment_id IS NOT NULL AS stored,
                    x.as_of, x.payload, x.last_error_at, x.refresh_requested_at, x.updated_at,
                    x.window_start, x.window_rows, x.window_checksum
             FROM {} e LEFT JOIN experiment_exposures x ON x.experiment_id = e.id
             WHERE e.id = $1::bigint",
            self.experiments
        );
        let sql = &sql;
        let found = self
            .retry_once(|client| async move { Ok(client.query_opt(sql, &[&id]).await?) })
            .await?;
        let Some(row) = found else {
            return Ok(None);
        };
        let column = |name: &str| DbError::BadRow {
            relation: self.experiments.clone(),
            reason: format!("experiment {id}: column {name} is NULL or of an unexpected type"),
        };
        let experiment = Experiment {
            id: row.try_get("id").map_err(|_| column("id"))?,
            environment_key: row
                .try_get("environment_key")
                .map_err(|_| column("environment_key"))?,
            feature_name: row
                .try_get("feature_name")
                .map_err(|_| column("feature_name"))?,
            status: row.try_get("status").map_err(|_| column("status"))?,
            started_at: row
                .try_get("started_at")
                .map_err(|_| column("started_at"))?,
            ended_at: row.try_get("ended_at").map_err(|_| column("ended_at"))?,
            variant_weights: self.variant_weights(id, &row)?,
        };
        let stored = if row.try_get("stored")? {
            Some(StoredSnapshot::from_row(&row)?)
        } else {
            None
        };
        Ok(Some((experiment, stored)))
    }

    /// `variant_weights` of a loaded row; a malformed value counts as none and is
    /// logged (once per load, so once per invocation and experiment).
    fn variant_weights(&self, id: i64, row: &Row) -> Result<Option<Weights>, DbError> {
        let text: Option<String> = row.try_get("variant_weights")?;
        let weights = match text.as_deref().map(serde_json::from_str::<Value>) {
            None => Ok(None),
            Some(Ok(value)) => Weights::from_json(Some(&value)),
            Some(Err(e)) => Err(format!("not readable as JSON here ({e})")),
        };
        Ok(weights.unwrap_or_else(|reason| {
            tracing::warn!(
                experiment_id = id,
                relation = %self.experiments,
                reason = %reason,
                "variant_weights ignored: not an object of non-negative numbers"
            );
            None
        }))
    }

    /// Ids of the experiments the sweep refreshes: started, `running`, `paused`
    /// or `completed`, and without a final snapshot (SPEC 5.4).
    pub async fn due_experiments(&self) -> Result<Vec<i64>, DbError> {
        let sql = format!(
            "SELECT e.id::bigint
             FROM {} e LEFT JOIN experiment_exposures x ON x.experiment_id = e.id
             WHERE e.id IS NOT NULL AND e.started_at IS NOT NULL
               AND e.status IN ('running', 'paused', 'completed')
               AND NOT (e.ended_at IS NOT NULL AND x.as_of IS NOT NULL AND x.as_of >= e.ended_at)
             ORDER BY e.id",
            self.experiments
        );
        let sql = &sql;
        let rows = self
            .retry_once(|client| async move { Ok(client.query(sql, &[]).await?) })
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Stores a good refresh unless a snapshot with a later `as_of` is already
    /// there (`as_of` never moves backwards). Returns the row as stored afterwards.
    /// Nothing is recorded about its window, so the next refresh is full.
    pub async fn store_payload(
        &self,
        id: i64,
        as_of: DateTime<Utc>,
        payload: &Value,
    ) -> Result<StoredSnapshot, DbError> {
        self.store_refresh(
            id,
            Good {
                as_of,
                payload,
                window: None,
                base: None,
            },
        )
        .await
    }

    /// Stores a good refresh as [`Store::store_payload`] does, with its window; an
    /// incremental one (with `base`) only over the snapshot it was computed from.
    /// Returns the row as stored afterwards.
    pub async fn store_refresh(&self, id: i64, good: Good<'_>) -> Result<StoredSnapshot, DbError> {
        let sql = format!(
            "WITH up AS (
                 INSERT INTO experiment_exposures AS x (experiment_id, as_of, payload, last_error_at, updated_at,
                                                        window_start, window_rows, window_checksum)
                 SELECT $1, $2, $3, NULL, now(), $4, $5, $6
                 WHERE $7::timestamptz IS NULL
                 ON CONFLICT (experiment_id) DO UPDATE
                 SET as_of = EXCLUDED.as_of, payload = EXCLUDED.payload,
                     last_error_at = NULL, updated_at = EXCLUDED.updated_at,
                     window_start = EXCLUDED.window_start, window_rows = EXCLUDED.window_rows,
                     window_checksum = EXCLUDED.window_checksum
                 WHERE x.as_of IS NULL OR x.as_of <= EXCLUDED.as_of
                 RETURNING {SNAPSHOT_COLUMNS}),
             cas AS (
                 UPDATE experiment_exposures AS x
                 SET as_of = $2, payload = $3, last_error_at = NULL, updated_at = now(),
                     window_start = $4, window_rows = $5, window_checksum = $6
                 WHERE x.experiment_id = $1 AND $7::timestamptz IS NOT NULL
                   AND x.as_of = $7 AND x.as_of <= $2
                 RETURNING {SNAPSHOT_COLUMNS})
             SELECT {SNAPSHOT_COLUMNS} FROM up
             UNION ALL
             SELECT {SNAPSHOT_COLUMNS} FROM cas
             UNION ALL
             SELECT {SNAPSHOT_COLUMNS} FROM experiment_exposures
             WHERE experiment_id = $1 AND NOT EXISTS (SELECT 1 FROM up) AND NOT EXISTS (SELECT 1 FROM cas)"
        );
        let start = good.window.map(|w| w.start);
        // Stored as the bits of the unsigned numbers (bigint has no unsigned form).
        let rows = good.window.map(|w| w.fingerprint.rows as i64);
        let checksum = good.window.map(|w| w.fingerprint.checksum as i64);
        // Safe to repeat: a full write follows the same `as_of` rule again, and an
        // incremental one whose first try committed finds its own row and returns it.
        let sql = &sql;
        let (start, rows, checksum) = (&start, &rows, &checksum);
        let row = self
            .retry_once(|client| async move {
                Ok(client
                    .query_one(
                        sql,
                        &[
                            &id,
                            &good.as_of,
                            good.payload,
                            start,
                            rows,
                            checksum,
                            &good.base,
                        ],
                    )
                    .await?)
            })
            .await?;
        Ok(StoredSnapshot::from_row(&row)?)
    }

    /// Claims the right to an API refresh: accepted (returns `None`) when no
    /// request was accepted within `interval` before `now`, else returns how long
    /// to wait. One statement, so of many simultaneous callers exactly one wins:
    /// the losers' upserts wait on the winner's row lock and then see its stamp.
    ///
    /// Never repeated after a lost connection (unlike the other statements): if
    /// the claim committed but its answer was lost, a repeat would find its own
    /// stamp and throttle the caller who made it. The pool's check before use
    /// already replaces connections that died between invocations.
    pub async fn claim_refresh_request(
        &self,
        id: i64,
        now: DateTime<Utc>,
        interval: Duration,
    ) -> Result<Option<Duration>, DbError> {
        let client = self.pool.get().await?;
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let earliest_previous = now - chrono::TimeDelta::milliseconds(interval_ms);
        let claimed = client
            .query_opt(
                "INSERT INTO experiment_exposures AS x (experiment_id, refresh_requested_at, updated_at)
                 VALUES ($1, $2, now())
                 ON CONFLICT (experiment_id) DO UPDATE
                 SET refresh_requested_at = EXCLUDED.refresh_requested_at, updated_at = now()
                 WHERE x.refresh_requested_at IS NULL OR x.refresh_requested_at <= $3
                 RETURNING 1",
                &[&id, &now, &earliest_previous],
            )
            .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let last: Option<DateTime<Utc>> = client
            .query_one(
                "SELECT refresh_requested_at FROM experiment_exposures WHERE experiment_id = $1",
                &[&id],
            )
            .await?
            .try_get(0)?;
        let wait = last.map_or(Duration::ZERO, |last| positive(last - earliest_previous));
        Ok(Some(wait.max(Duration::from_millis(1))))
    }

    /// Stamps a failed refresh: only `last_error_at` (and `updated_at`) change,
    /// so the last good payload stays readable. A failure of a refresh older
    /// than the stored snapshot is not stamped: the newer data is good.
    pub async fn store_failure(
        &self,
        id: i64,
        attempted_as_of: DateTime<Utc>,
    ) -> Result<(), DbError> {
        // Safe to repeat: a second stamp only moves `last_error_at` a little later.
        self.retry_once(|client| async move {
            Ok(client
                .execute(
                    "INSERT INTO experiment_exposures AS x (experiment_id, last_error_at, updated_at)
                     VALUES ($1, now(), now())
                     ON CONFLICT (experiment_id) DO UPDATE
                     SET last_error_at = now(), updated_at = now()
                     WHERE x.as_of IS NULL OR x.as_of < $2",
                    &[&id, &attempted_as_of],
                )
                .await?)
        })
        .await?;
        Ok(())
    }

    /// Runs `statement` on a pooled connection and, when that connection turns
    /// out to be lost, once more on another one. Only for statements that are
    /// safe to run twice.
    async fn retry_once<T, F, Fut>(&self, statement: F) -> Result<T, DbError>
    where
        F: Fn(Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        match statement(self.pool.get().await?).await {
            Err(error) if error.is_connection_lost() => {
                tracing::warn!(error = %error, "PostgreSQL connection lost; retrying once on a fresh connection");
                statement(self.pool.get().await?).await
            }
            other => other,
        }
    }
}

/// The connection string as `tokio-postgres` takes it, and libpq's `sslmode`
/// (which it cannot parse in full). Errors never echo the string.
pub fn connection_config(url: &str) -> Result<(tokio_postgres::Config, tls::SslMode), ConfigError> {
    let fail = |reason: String| ConfigError {
        variable: "DATABASE_URL",
        reason,
    };
    let (rest, mode) = tls::split_sslmode(url).map_err(fail)?;
    let mut pg = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| fail(format!("not a PostgreSQL connection string ({e})")))?;
    pg.ssl_mode(mode.negotiation());
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    Ok((pg, mode))
}

/// A time difference as a `Duration`; negative differences are zero.
fn positive(d: chrono::TimeDelta) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names_are_quoted_per_part() {
        assert_eq!(quote_relation("experiments"), "\"experiments\"");
        assert_eq!(
            quote_relation("app.v_experiments"),
            "\"app\".\"v_experiments\""
        );
        assert_eq!(quote_relation("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn migrations_are_ordered_and_unique() {
        let names: Vec<_> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
