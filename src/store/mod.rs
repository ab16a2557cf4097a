//! PostgreSQL: experiments (read only) and exposure snapshots (owned), SPEC 2.2 and 2.3.
//!
//! Every write is one statement whose `WHERE` carries the rule it enforces, so
//! concurrent refreshes need no locks held across the ClickHouse query.

mod connection;
mod experiments;
mod migrations;
mod snapshots;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};

use crate::config::{Config, ConfigError};
use crate::tls;

pub use connection::DbError;
pub use migrations::MIGRATIONS;
pub use snapshots::Good;

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
        let (pg, mode) = connection::config(config.database_url.expose())?;
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
}
