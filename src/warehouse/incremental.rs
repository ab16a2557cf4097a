//! The incremental refresh's query (README "Incremental refresh"): the
//! fingerprints of the stored window and the state changes of the identities
//! seen since it, in one read.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::WarehouseError;
use super::plan::{counted, Plan};
use super::sql::{bind_filter, bind_time, bucket_start, render, Target, TimestampKind};
use super::Warehouse;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::transition::{IdentityState, Transition};
use crate::domain::window::Window;

/// The incremental query (README "Incremental refresh"): one read of the
/// window `[start, end)` in `{counted}` groups every row by `key`, a 64-bit
/// hash of the identifier when the identity was seen in `[base, end)` (the
/// `{in}` set of the same hashes), else 0, and by `late` (the row is in
/// `[base, end)`). So each changed identity keeps one small state (rows, hash
/// sum, first timestamp, lowest and highest variant, before `base` and since),
/// and all other rows fold into the one 0 group, which only adds to the
/// fingerprints. Grouping on a number and on `late` rather than on the
/// identifier string with `-If` aggregates per period is what keeps the query
/// near the cost of its scan (README "Incremental refresh"). Two identities
/// behind one key would share a state: each group keeps its lowest and highest
/// identifier (only changed rows pay for that), and a group holding two makes
/// the answer unusable (`collisions`), so the hash only costs speed, never
/// exactness. The states become transitions (absent, quarantined, or first
/// bucket and variant, before and after), counted per transition; every row
/// carries its share of the fingerprints, which the decoder adds up. The `IN`
/// set is a read of its own: rows of `[base, end)` the main read sees but the
/// set missed (inserted between the two) show as `changed_hits <
/// changed_rows`, and the answer is not used.
///
/// On one server or under the exact plan `{in}` is `GLOBAL IN`: built once over
/// every shard and sent to each, since an identity's rows may live on several.
/// Under the sharded plan every shard runs this on its local table with a plain
/// `IN` over the same local table (an identity lives on one shard), and this
/// server adds the shards' transitions up (`SHARDED_SQL`).
const INCREMENTAL_SQL: &str = "\
SELECT
    {join_key}old_state, old_bucket, old_variant, new_state, new_bucket, new_variant,
    toUInt64(count()) AS identities,
    toUInt64(sum(before_rows)) AS before_rows, toUInt64(sum(before_checksum)) AS before_checksum,
    toUInt64(sum(window_rows)) AS window_rows, toUInt64(sum(window_checksum)) AS window_checksum,
    toUInt64(sum(changed_rows)) AS changed_rows, toUInt64(sum(changed_hits)) AS changed_hits,
    toUInt64(sum(collided)) AS collisions
FROM
(
    SELECT
        multiIf(key = 0 OR sumIf(rows, NOT late) = 0, toUInt8(0),
                minIf(low, NOT late) != maxIf(high, NOT late), toUInt8(1), toUInt8(2)) AS old_state,
        toUInt32(if(old_state = 2, intDiv(toUInt32(toDateTime(min(first_seen))), ?) * ?, 0)) AS old_bucket,
        if(old_state = 2, minIf(low, NOT late), '') AS old_variant,
        multiIf(key = 0, toUInt8(0), min(low) != max(high), toUInt8(1), toUInt8(2)) AS new_state,
        toUInt32(if(new_state = 2, intDiv(toUInt32(toDateTime(min(first_seen))), ?) * ?, 0)) AS new_bucket,
        if(new_state = 2, min(low), '') AS new_variant,
        sumIf(rows, NOT late) AS before_rows, sumIf(checksum, NOT late) AS before_checksum,
        sum(rows) AS window_rows, sum(checksum) AS window_checksum,
        sumIf(rows, late) AS changed_rows, sumIf(rows, late AND key != 0) AS changed_hits,
        toUInt8(min(lowest_identifier) != max(highest_identifier)) AS collided
    FROM
    (
        SELECT
            key, late, count() AS rows, sum(row_hash) AS checksum,
            min(timestamp) AS first_seen, minIf(value, key != 0) AS low, maxIf(value, key != 0) AS high,
            minIf(identifier, key != 0) AS lowest_identifier,
            maxIf(identifier, key != 0) AS highest_identifier
        FROM
        (
            SELECT
                if(cityHash64(identifier) {in} (SELECT cityHash64(identifier) FROM {counted} WHERE {delta}),
                   cityHash64(identifier), toUInt64(0)) AS key,
                identifier, value, timestamp,
                timestamp >= {bound} AS late,
                {row_hash} AS row_hash
            FROM {counted}
            WHERE {filter}
        )
        GROUP BY key, late
    )
    GROUP BY key
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
    /// 0 for the identities not seen since `base` (fingerprints only), 1 quarantined, 2 counted.
    pub new_state: u8,
    /// Bucket start (Unix seconds) of the state at `end`.
    pub new_bucket: u32,
    /// Variant of the state at `end`.
    pub new_variant: String,
    /// Identities making this transition.
    pub identities: u64,
    /// Rows of `[start, base)`.
    pub before_rows: u64,
    /// Wrapping sum of those rows' content hashes.
    pub before_checksum: u64,
    /// Rows of `[start, end)`.
    pub window_rows: u64,
    /// Wrapping sum of those rows' content hashes.
    pub window_checksum: u64,
    /// Rows of `[base, end)` in the main read.
    pub changed_rows: u64,
    /// Those of them whose identity is in the `IN` set.
    pub changed_hits: u64,
    /// Grouping keys that stood for two or more identities.
    pub collisions: u64,
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
    /// False when two identities shared the query's 64-bit grouping key: their
    /// states were merged, so the transitions cannot be used.
    pub keys_distinct: bool,
}

/// Decodes the incremental answer.
pub fn delta(rows: Vec<TransitionRow>) -> Delta {
    let mut out = Delta {
        before: Fingerprint::default(),
        window: Fingerprint::default(),
        transitions: Vec::new(),
        complete: true,
        keys_distinct: true,
    };
    let (mut changed_rows, mut changed_hits) = (0_u64, 0_u64);
    for row in rows {
        // Each row carries the fingerprint terms of its identities' rows.
        out.before = out.before.add(row.before_rows, row.before_checksum);
        out.window = out.window.add(row.window_rows, row.window_checksum);
        changed_rows = changed_rows.wrapping_add(row.changed_rows);
        changed_hits = changed_hits.wrapping_add(row.changed_hits);
        out.keys_distinct &= row.collisions == 0;
        // New state 0: the rows of identities not seen since `base`.
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
    out.complete = changed_hits == changed_rows;
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
    /// The incremental query from the snapshot stored at `base` to `window.end`
    /// under the exact plan, buckets at the window's granularity (for tests and benchmarks).
    pub fn incremental_query(
        &self,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        self.incremental_query_for(&Plan::Exact, kind, target, window, base)
    }

    /// The incremental query under `plan` (for tests and benchmarks).
    pub fn incremental_query_for(
        &self,
        plan: &Plan,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        let width = window.granularity.seconds();
        // Shards answer on their own local table (an identity lives on one);
        // otherwise the set is built once and sent to every shard.
        let (in_set, join_key) = match plan {
            Plan::Exact => ("GLOBAL IN", ""),
            Plan::Sharded { .. } => ("IN", "'' AS identifier, "),
        };
        let per_shard = INCREMENTAL_SQL
            .replace("{counted}", counted(plan))
            .replace("{in}", in_set)
            .replace("{join_key}", join_key);
        let text = plan.wrap(
            &per_shard,
            &[
                "old_state",
                "old_bucket",
                "old_variant",
                "new_state",
                "new_bucket",
                "new_variant",
            ],
            &[
                "identities",
                "before_rows",
                "before_checksum",
                "window_rows",
                "window_checksum",
                "changed_rows",
                "changed_hits",
                "collisions",
            ],
        );
        let query = self.client.query(&render(&text, kind));
        // Binds follow the text: (the Distributed table,) the bucket width four
        // times, the `IN` set's read of `[base, end)`, `base`, the main read.
        let query = self.bind_wrapper(query, plan);
        let query = query.bind(width).bind(width).bind(width).bind(width);
        let query = bind_filter(
            self.bind_counted(query, plan),
            kind,
            target,
            base,
            window.end,
        );
        let query = bind_time(query, kind, base);
        bind_filter(
            self.bind_counted(query, plan),
            kind,
            target,
            window.start,
            window.end,
        )
    }

    /// Runs the incremental query from the snapshot stored at `base`.
    pub async fn incremental(
        &self,
        target: Target<'_>,
        window: &Window,
        base: DateTime<Utc>,
    ) -> Result<Delta, WarehouseError> {
        let kind = self.timestamp_kind().await?;
        let plan = self.plan().await?;
        let query = self.incremental_query_for(plan, kind, target, window, base);
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
            collisions: 0,
        }
    }

    #[test]
    fn incremental_answers_become_transitions_and_fingerprints() {
        let d = delta(vec![transition(0, 2, 3, 2), transition(2, 1, 1, 2)]);
        // Every row carries its identities' share: the fingerprints add up (wrapping).
        assert_eq!(
            d.before,
            Fingerprint {
                rows: 20,
                checksum: 22
            }
        );
        assert_eq!(
            d.window,
            Fingerprint {
                rows: 24,
                checksum: 26
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
        // The row with new_state 0 (identities not seen since `base`) only carries fingerprints.
        let mut unchanged = transition(0, 0, 1, 0);
        unchanged.window_checksum = u64::MAX;
        let only = delta(vec![unchanged, transition(0, 2, 1, 2)]);
        assert_eq!(only.transitions.len(), 1);
        assert_eq!(only.window.rows, 24);
        assert_eq!(only.window.checksum, 12, "u64::MAX + 13 wraps");
        // Rows since `base` whose identity the IN set missed: not complete.
        assert!(!delta(vec![transition(0, 2, 3, 1)]).complete);
        assert!(
            !only.complete,
            "the unchanged row's 2 rows since base are not hits"
        );
        // A key that stood for two identities: the states were merged.
        assert!(d.keys_distinct);
        let mut merged = transition(0, 2, 1, 2);
        merged.collisions = 1;
        assert!(!delta(vec![transition(0, 2, 3, 2), merged]).keys_distinct);
    }
}
