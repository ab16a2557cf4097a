//! How many rows arrived since the stored snapshot: decides incremental or full.

use chrono::{DateTime, Utc};

use super::error::WarehouseError;
use super::sql::{render, Target, TimestampKind};
use super::Warehouse;
use crate::domain::window::Window;

/// How many rows arrived in `[base, end)`: a primary-key range, so it reads little.
const DELTA_ROWS_SQL: &str = "SELECT toUInt64(count()) FROM ? WHERE {delta}";

impl Warehouse {
    /// Counts the experiment's rows in `[base, window.end)` (for tests and benchmarks).
    pub fn delta_rows_query(
        &self,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        let query = self.client.query(&render(DELTA_ROWS_SQL, kind));
        self.bind_read(query, kind, target, base, window.end)
    }

    /// Rows of the experiment in `[base, window.end)`: how much changed since the stored snapshot.
    pub async fn delta_rows(
        &self,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> Result<u64, WarehouseError> {
        let kind = self.timestamp_kind().await?;
        let query = self.delta_rows_query(kind, target, window, base);
        self.with_timeout(query.fetch_one::<u64>()).await
    }
}
