//! Unfinished or recent mutations of the events table, which a row count cannot see.

use chrono::{DateTime, Utc};

use super::error::WarehouseError;
use super::Warehouse;

/// Mutations (`ALTER TABLE ... UPDATE/DELETE`) of the events table not finished,
/// or created since a time. Old and current servers list them in `system.mutations`.
const MUTATIONS_SQL: &str = "\
SELECT toUInt64(count()) FROM system.mutations
WHERE database = currentDatabase() AND table = ? AND (is_done = 0 OR create_time >= toDateTime(?))";

impl Warehouse {
    /// Mutations of the events table that are unfinished or were created at or after
    /// `since`: their changes may not show in a row count (an `UPDATE` of a value).
    pub async fn mutations_since(&self, since: DateTime<Utc>) -> Result<u64, WarehouseError> {
        let query = self
            .client
            .query(MUTATIONS_SQL)
            .bind(&self.table)
            .bind(since.timestamp());
        self.with_timeout(query.fetch_one::<u64>()).await
    }
}
