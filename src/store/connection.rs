//! The connection string, and what a failed statement means.

use crate::causes::with_causes;
use crate::config::ConfigError;
use crate::conninfo::{self, SslMode};

/// PostgreSQL could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had.
    #[error("no PostgreSQL connection: {}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL statement failed: {}", with_causes(.0))]
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

/// `DATABASE_URL` as `tokio-postgres` takes it, and its libpq `sslmode`.
pub(super) fn config(url: &str) -> Result<(tokio_postgres::Config, SslMode), ConfigError> {
    conninfo::parse(url).map_err(|reason| ConfigError {
        variable: "DATABASE_URL",
        reason,
    })
}
