//! The full refresh's query (SPEC 3): every exposure of the window, one row per
//! (quarantined, bucket, variant), and the window's fingerprint in the same read.

use serde::Deserialize;

use super::error::WarehouseError;
use super::plan::{counted, Plan};
use super::sql::{bind_filter, bucket_start, render, Target, TimestampKind};
use super::Warehouse;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::summary::Count;
use crate::domain::window::Window;

/// The answer: per-(quarantined, bucket, code) counts from `{counts}`, their
/// variant codes named by a small `GROUP BY value` over the same rows.
const EXPOSURES_SQL: &str = "\
SELECT
    quarantined,
    bucket,
    if(quarantined = 1, '', name) AS variant,
    identities,
    toUInt8(quarantined = 0 AND (named = 0 OR name != other_name)) AS unresolved,
    window_rows,
    window_checksum
FROM
(
{counts}
) AS counts
ANY LEFT JOIN
(
    SELECT code, min(value) AS name, max(value) AS other_name, toUInt8(1) AS named
    FROM (SELECT value, cityHash64(value) AS code FROM ? WHERE {filter} GROUP BY value)
    GROUP BY code
) AS names USING code
ORDER BY bucket, variant";

/// Per identity (first timestamp, lowest and highest variant code, its rows
/// and their hashes), then per (quarantined, bucket, code), over `{counted}`:
/// the events table, or one shard's local table. `identifier` is the column
/// the sharded plan joins on (module `plan`).
const PER_BUCKET_SQL: &str = "\
    SELECT
        '' AS identifier,
        toUInt8(min_code != max_code) AS quarantined,
        toUInt32(if(min_code = max_code, intDiv(toUInt32(toDateTime(first_seen)), ?) * ?, 0)) AS bucket,
        if(min_code = max_code, min_code, toUInt64(0)) AS code,
        toUInt64(count()) AS identities,
        toUInt64(sum(rows)) AS window_rows,
        toUInt64(sum(checksum)) AS window_checksum
    FROM
    (
        SELECT
            min(timestamp) AS first_seen,
            min(cityHash64(value)) AS min_code,
            max(cityHash64(value)) AS max_code,
            count() AS rows,
            sum({row_hash}) AS checksum
        FROM {counted}
        WHERE {filter}
        GROUP BY sipHash128(identifier)
    )
    GROUP BY quarantined, bucket, code";

/// One result row of the exposures query, as the server sends it.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct BucketRow {
    /// 1 for the single row counting quarantined identities.
    pub quarantined: u8,
    /// Bucket start in Unix seconds (0 on the quarantine row).
    pub bucket: u32,
    /// Variant key (empty on the quarantine row).
    pub variant: String,
    /// Identities in this row.
    pub identities: u64,
    /// 1 when the row's variant code could not be named exactly (see the module doc).
    pub unresolved: u8,
    /// Rows of the window behind this row's identities (their sum is the window's fingerprint).
    pub window_rows: u64,
    /// Wrapping sum of those rows' timestamps (see [`Fingerprint`]).
    pub window_checksum: u64,
}

impl TryFrom<BucketRow> for Count {
    type Error = WarehouseError;

    fn try_from(row: BucketRow) -> Result<Self, Self::Error> {
        // Flags are 0 or 1, and the quarantine row has no bucket or variant: anything
        // else is bytes that happened to decode (e.g. a proxy's page), never a snapshot.
        if row.quarantined > 1
            || row.unresolved > 1
            || (row.quarantined == 1 && (row.bucket != 0 || !row.variant.is_empty()))
        {
            return Err(WarehouseError::Malformed(format!(
                "impossible row (quarantined {}, unresolved {}, bucket {})",
                row.quarantined, row.unresolved, row.bucket
            )));
        }
        let bucket = bucket_start(row.bucket);
        if row.unresolved != 0 {
            return Err(WarehouseError::UnresolvedVariant {
                bucket,
                identities: row.identities,
            });
        }
        Ok(if row.quarantined != 0 {
            Count::Quarantined {
                identities: row.identities,
            }
        } else {
            Count::FirstExposures {
                bucket,
                variant: row.variant,
                identities: row.identities,
            }
        })
    }
}

/// The counts of a whole answer, or the first reason it cannot be trusted.
pub fn counts(rows: Vec<BucketRow>) -> Result<Vec<Count>, WarehouseError> {
    rows.into_iter().map(Count::try_from).collect()
}

/// The fingerprint of the window a full answer counted.
pub fn fingerprint(rows: &[BucketRow]) -> Fingerprint {
    rows.iter().fold(Fingerprint::default(), |f, row| {
        f.add(row.window_rows, row.window_checksum)
    })
}

/// A full computation: the counts and the fingerprint of the window they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// Per-bucket counts.
    pub counts: Vec<Count>,
    /// What the window held.
    pub fingerprint: Fingerprint,
}

impl Warehouse {
    /// The query a refresh sends under the exact plan, every value bound (for tests and benchmarks).
    pub fn exposures_query(
        &self,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
    ) -> clickhouse::query::Query {
        self.exposures_query_for(&Plan::Exact, kind, target, window)
    }

    /// The query a refresh sends under `plan`, every value bound (for tests and benchmarks).
    pub fn exposures_query_for(
        &self,
        plan: &Plan,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
    ) -> clickhouse::query::Query {
        let width = window.granularity.seconds();
        let counts = plan.wrap(
            &PER_BUCKET_SQL.replace("{counted}", counted(plan)),
            &["quarantined", "bucket", "code"],
            &["identities", "window_rows", "window_checksum"],
        );
        let query = self
            .client
            .query(&render(&EXPOSURES_SQL.replace("{counts}", &counts), kind));
        // Binds follow the text: (the Distributed table,) the bucket width twice,
        // the counted table and its filter, then the read that names the variants.
        let query = self.bind_wrapper(query, plan);
        let query = self.bind_counted(query.bind(width).bind(width), plan);
        let query = bind_filter(query, kind, target, window.start, window.end);
        self.bind_read(query, kind, target, window.start, window.end)
    }

    /// Runs the exposures query for `target` over `window`.
    pub async fn exposures(
        &self,
        target: Target<'_>,
        window: &Window,
    ) -> Result<Computed, WarehouseError> {
        if window.is_empty() {
            return Ok(Computed {
                counts: Vec::new(),
                fingerprint: Fingerprint::default(),
            });
        }
        let kind = self.timestamp_kind().await?;
        let plan = self.plan().await?;
        let query = self.exposures_query_for(plan, kind, target, window);
        let rows = self.with_timeout(query.fetch_all::<BucketRow>()).await?;
        let fingerprint = fingerprint(&rows);
        Ok(Computed {
            counts: counts(rows)?,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::retry::{Class, Retryable};
    use chrono::{TimeZone, Utc};

    fn row(quarantined: u8, variant: &str, identities: u64, unresolved: u8) -> BucketRow {
        BucketRow {
            quarantined,
            bucket: if quarantined == 1 { 0 } else { 1_780_272_000 },
            variant: variant.into(),
            identities,
            unresolved,
            window_rows: 0,
            window_checksum: 0,
        }
    }

    #[test]
    fn impossible_rows_are_refused() {
        for bad in [
            row(2, "", 1, 0),
            row(0, "control", 1, 7),
            row(1, "control", 1, 0),
        ] {
            let e = counts(vec![bad]).unwrap_err();
            assert!(matches!(e, WarehouseError::Malformed(_)), "{e}");
            assert_eq!(e.class(), Class::Permanent);
        }
    }

    #[test]
    fn rows_become_counts_unless_a_variant_is_unnamed() {
        let named = counts(vec![row(1, "", 4, 0), row(0, "control", 7, 0)]).unwrap();
        assert_eq!(
            named,
            [
                Count::Quarantined { identities: 4 },
                Count::FirstExposures {
                    bucket: Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
                    variant: "control".into(),
                    identities: 7,
                },
            ]
        );
        // One unnamed row fails the whole answer: a snapshot must not lose identities.
        let err = counts(vec![row(0, "control", 7, 0), row(0, "", 3, 1)]).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("3 identities in bucket 2026-06-01 00:00:00 UTC"),
            "{message}"
        );
    }

    #[test]
    fn query_binds_every_value() {
        let config = Config::from_lookup(|_| None).unwrap();
        let warehouse = Warehouse::new(&config).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let window = Window::new(start, Some(start + chrono::TimeDelta::hours(1)), start);
        let target = Target {
            environment_key: "prod' OR 1=1 --",
            feature_name: "new-checkout",
        };
        let sql = warehouse
            .exposures_query(TimestampKind::DateTime64, target, &window)
            .sql_display()
            .to_string();
        assert!(
            sql.contains("environment_key = 'prod\\' OR 1=1 --'"),
            "{sql}"
        );
        assert!(sql.contains("event = '$flag_exposure'"), "{sql}");
        // Both reads of the table (counts and variant names) carry the whole filter.
        assert_eq!(sql.matches("FROM `events`").count(), 2, "{sql}");
        assert_eq!(
            sql.matches("feature_name = 'new-checkout'").count(),
            2,
            "{sql}"
        );
        assert_eq!(
            sql.matches("timestamp < fromUnixTimestamp64Milli(toInt64(1780275600000))")
                .count(),
            2,
            "{sql}"
        );
        assert!(
            sql.contains("fromUnixTimestamp64Milli(toInt64(1780272000000))"),
            "{sql}"
        );
        assert!(!sql.contains('?'), "{sql}");
    }
}
