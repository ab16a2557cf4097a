//! The incremental refresh's query (README "Incremental refresh"): the
//! fingerprints of the stored window and the state changes of the identities
//! seen since it, in one read.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::WarehouseError;
use super::sql::{bind_time, bucket_start, render, Target, TimestampKind};
use super::Warehouse;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::transition::{IdentityState, Transition};
use crate::domain::window::Window;

/// The incremental query (README "Incremental refresh"): one read of the window
/// `[start, end)` computes the fingerprint of its earlier part `[start, base)` and
/// of all of it, and collects the rows of the identities seen in `[base, end)`
/// (the `GLOBAL IN` set: on a `Distributed` table it is built once over every
/// shard and sent to each, since an identity's rows may live on different
/// shards). Only those few rows are grouped, by the identifier itself; their
/// state before and after `base` (absent, quarantined, or first bucket and
/// variant) is counted per transition. Strings are compared directly, so no
/// variant needs naming. Always at least one row: a row with `new_state = 0`
/// only carries the fingerprints. The `IN` set is a read of its own: rows of
/// `[base, end)` the main read sees but the set missed (inserted between the two)
/// show as `changed_hits < changed_rows`, and the answer is not used.
const INCREMENTAL_SQL: &str = "\
SELECT
    old_state, old_bucket, old_variant, new_state, new_bucket, new_variant,
    toUInt64(count()) AS identities,
    any(before_rows) AS before_rows, any(before_checksum) AS before_checksum,
    any(window_rows) AS window_rows, any(window_checksum) AS window_checksum,
    any(changed_rows) AS changed_rows, any(changed_hits) AS changed_hits
FROM
(
    SELECT
        multiIf(identifier = '' OR countIf(before) = 0, toUInt8(0),
                minIf(value, before) != maxIf(value, before), toUInt8(1), toUInt8(2)) AS old_state,
        toUInt32(if(old_state = 2, intDiv(toUInt32(toDateTime(minIf(timestamp, before))), ?) * ?, 0)) AS old_bucket,
        if(old_state = 2, minIf(value, before), '') AS old_variant,
        multiIf(identifier = '', toUInt8(0), min(value) != max(value), toUInt8(1), toUInt8(2)) AS new_state,
        toUInt32(if(new_state = 2, intDiv(toUInt32(toDateTime(min(timestamp))), ?) * ?, 0)) AS new_bucket,
        if(new_state = 2, min(value), '') AS new_variant,
        any(before_rows) AS before_rows, any(before_checksum) AS before_checksum,
        any(window_rows) AS window_rows, any(window_checksum) AS window_checksum,
        any(changed_rows) AS changed_rows, any(changed_hits) AS changed_hits
    FROM
    (
        SELECT
            tupleElement(hit, 1) AS identifier, tupleElement(hit, 2) AS value,
            tupleElement(hit, 3) AS timestamp, tupleElement(hit, 4) AS before,
            before_rows, before_checksum, window_rows, window_checksum, changed_rows, changed_hits
        FROM
        (
            SELECT
                toUInt64(countIf((timestamp < {bound}) AS early)) AS before_rows,
                toUInt64(sumIf({epoch}, early)) AS before_checksum,
                toUInt64(count()) AS window_rows,
                toUInt64(sum({epoch})) AS window_checksum,
                groupArrayIf((identifier, value, timestamp, early), (identifier GLOBAL IN
                    (SELECT identifier FROM ? WHERE {delta})) AS changed) AS hits,
                toUInt64(countIf(NOT early)) AS changed_rows,
                toUInt64(countIf(changed AND NOT early)) AS changed_hits
            FROM ?
            WHERE {filter}
        )
        LEFT ARRAY JOIN hits AS hit
    )
    GROUP BY identifier
)
GROUP BY old_state, old_bucket, old_variant, new_state, new_bucket, new_variant";

/// One result row of the incremental query, as the server sends it.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct TransitionRow {
    /// 0 absent before `base`, 1 quarantined, 2 counted in `old_bucket` under `old_variant`.
    pub old_state: u8,
    /// Bucket start (Unix seconds) of the state before `base`.
    pub old_bucket: u32,
    /// Variant of the state before `base`.
    pub old_variant: String,
    /// 0 on the row that only carries fingerprints, 1 quarantined, 2 counted.
    pub new_state: u8,
    /// Bucket start (Unix seconds) of the state at `end`.
    pub new_bucket: u32,
    /// Variant of the state at `end`.
    pub new_variant: String,
    /// Identities making this transition.
    pub identities: u64,
    /// Rows of `[start, base)`.
    pub before_rows: u64,
    /// Checksum of `[start, base)`.
    pub before_checksum: u64,
    /// Rows of `[start, end)`.
    pub window_rows: u64,
    /// Checksum of `[start, end)`.
    pub window_checksum: u64,
    /// Rows of `[base, end)` in the main read.
    pub changed_rows: u64,
    /// Those of them whose identity is in the `IN` set.
    pub changed_hits: u64,
}

/// The answer of the incremental query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The earlier window `[start, base)` as read now: equal to the stored fingerprint when unchanged.
    pub before: Fingerprint,
    /// The whole window `[start, end)`, to store with the new payload.
    pub window: Fingerprint,
    /// Per-identity state changes of the identities seen since `base`.
    pub transitions: Vec<Transition>,
    /// False when the set of identities seen since `base` missed rows of the main
    /// read (inserted between the two reads): the transitions are incomplete.
    pub complete: bool,
}

/// Decodes the incremental answer.
pub fn delta(rows: Vec<TransitionRow>) -> Delta {
    let mut out = Delta {
        before: Fingerprint::default(),
        window: Fingerprint::default(),
        transitions: Vec::new(),
        complete: true,
    };
    for row in rows {
        out.complete = row.changed_hits == row.changed_rows;
        // Every row repeats the same fingerprints (one read).
        out.before = Fingerprint {
            rows: row.before_rows,
            checksum: row.before_checksum,
        };
        out.window = Fingerprint {
            rows: row.window_rows,
            checksum: row.window_checksum,
        };
        // New state 0 is the row that only carries the fingerprints.
        let Some(new) = identity_state(row.new_state, row.new_bucket, row.new_variant) else {
            continue;
        };
        let old = identity_state(row.old_state, row.old_bucket, row.old_variant)
            .unwrap_or(IdentityState::Absent);
        out.transitions.push(Transition {
            old,
            new,
            identities: row.identities,
        });
    }
    out
}

/// A state column of the incremental answer: 0 absent (`None`), 1 quarantined,
/// 2 counted in `bucket` under `variant`.
fn identity_state(state: u8, bucket: u32, variant: String) -> Option<IdentityState> {
    match state {
        0 => None,
        1 => Some(IdentityState::Quarantined),
        _ => Some(IdentityState::Counted {
            bucket: bucket_start(bucket),
            variant,
        }),
    }
}

impl Warehouse {
    /// The incremental query from the snapshot stored at `base` to `window.end`,
    /// buckets at the window's granularity (for tests and benchmarks).
    pub fn incremental_query(
        &self,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        let width = window.granularity.seconds();
        let query = self
            .client
            .query(&render(INCREMENTAL_SQL, kind))
            .bind(width)
            .bind(width)
            .bind(width)
            .bind(width);
        let query = bind_time(query, kind, base);
        let query = self.bind_read(query, kind, target, base, window.end);
        self.bind_read(query, kind, target, window.start, window.end)
    }

    /// Runs the incremental query from the snapshot stored at `base`.
    pub async fn incremental(
        &self,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> Result<Delta, WarehouseError> {
        let kind = self.timestamp_kind().await?;
        let query = self.incremental_query(kind, target, window, base);
        let rows = self
            .with_timeout(query.fetch_all::<TransitionRow>())
            .await?;
        Ok(delta(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn transition(old_state: u8, new_state: u8, identities: u64, hits: u64) -> TransitionRow {
        TransitionRow {
            old_state,
            old_bucket: 1_780_272_000,
            old_variant: "control".into(),
            new_state,
            new_bucket: 1_780_275_600,
            new_variant: "control".into(),
            identities,
            before_rows: 10,
            before_checksum: 11,
            window_rows: 12,
            window_checksum: 13,
            changed_rows: 2,
            changed_hits: hits,
        }
    }

    #[test]
    fn incremental_answers_become_transitions_and_fingerprints() {
        let d = delta(vec![transition(0, 2, 3, 2), transition(2, 1, 1, 2)]);
        assert_eq!(
            d.before,
            Fingerprint {
                rows: 10,
                checksum: 11
            }
        );
        assert_eq!(
            d.window,
            Fingerprint {
                rows: 12,
                checksum: 13
            }
        );
        assert!(d.complete);
        assert_eq!(d.transitions.len(), 2);
        assert_eq!(d.transitions[0].old, IdentityState::Absent);
        assert_eq!(
            d.transitions[1].old,
            IdentityState::Counted {
                bucket: Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
                variant: "control".into(),
            }
        );
        assert_eq!(d.transitions[1].new, IdentityState::Quarantined);
        // The row with new_state 0 only carries fingerprints.
        let only = delta(vec![transition(0, 0, 1, 2)]);
        assert!(only.transitions.is_empty());
        assert_eq!(only.window.rows, 12);
        // Rows since `base` whose identity the IN set missed: not complete.
        assert!(!delta(vec![transition(0, 2, 3, 1)]).complete);
    }
}
