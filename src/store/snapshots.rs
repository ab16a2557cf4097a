//! Writing `experiment_exposures` (owned, SPEC 2.3): every write is one
//! statement whose `WHERE` carries the rule it enforces.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;

use super::{positive, DbError, Store};
use crate::domain::fingerprint::Fingerprint;
use crate::domain::snapshot::{StoredSnapshot, StoredWindow};

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

/// The stored snapshot of a row that selected [`SNAPSHOT_COLUMNS`].
pub(super) fn from_row(row: &Row) -> Result<StoredSnapshot, tokio_postgres::Error> {
    Ok(StoredSnapshot {
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

impl Store {
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
        Ok(from_row(&row)?)
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
}
