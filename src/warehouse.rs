//! The exposures query against ClickHouse (SPEC sections 2.1 and 3).
//!
//! One query per refresh, over every exposure in the window, so its shape is the
//! product's cost (README "Performance"). It has to run unchanged on current
//! releases and on the old server Debian packages (18.16), which shapes it:
//! - identities are grouped by `sipHash128(identifier)`, a 16-byte fixed key,
//!   not by the string: hashing and comparing variable-length keys was most of
//!   the cost and memory. Two identifiers are the same identity only if their
//!   SipHash-128 are equal, the rule ClickHouse's own `uniqExact` and
//!   `count(DISTINCT)` apply to strings (a collision among 10 million identities
//!   has a probability near 10^-25);
//! - variants travel as `cityHash64(value)` codes, so the per-identity state is
//!   three numbers (first timestamp, lowest and highest code: quarantined when
//!   they differ). The codes are named again by a small `GROUP BY value` over the
//!   same rows, joined at the end; a code with two names (a 64-bit collision
//!   between two variant keys) or none (a variant inserted between the two reads)
//!   marks its row `unresolved` and the refresh fails instead of guessing;
//! - no CTEs (`WITH name AS (subquery)` is missing on 18.16): subqueries in `FROM`;
//! - buckets are computed from Unix seconds, `intDiv(epoch, width) * width`,
//!   which is a UTC hour or day whatever the server's or the column's time zone;
//! - every value is bound client-side with `?` (18.16 cannot take server-side
//!   parameters sent as multipart), and results come as plain `RowBinary`
//!   with explicit casts (18.16 lacks `RowBinaryWithNamesAndTypes`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::sql::Identifier;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::{Config, ConfigError};
use crate::retry::{Class, Retryable};
use crate::summary::{Count, IdentityState, Transition};
use crate::window::Window;

/// The `event` value of exposures.
pub const EXPOSURE_EVENT: &str = "$flag_exposure";

/// Why the warehouse could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The server refused the query or could not be reached.
    #[error("ClickHouse query failed: {}", crate::error::with_causes(.0))]
    Query(#[from] clickhouse::error::Error),
    /// No answer within the configured timeout.
    #[error("ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
    /// The invocation's deadline stopped the query (time was kept to stamp the failure).
    #[error("ClickHouse query stopped after {0:?}: the invocation's time ran out")]
    OutOfTime(Duration),
    /// A variant code of the answer had no name or two (module doc); a retry reads it again.
    #[error(
        "ClickHouse answer: the variant of {identities} identities in bucket {bucket} \
         could not be named exactly (a variant key appeared during the query, or two \
         variant keys share a 64-bit hash)"
    )]
    UnresolvedVariant {
        /// Start of the row's bucket.
        bucket: DateTime<Utc>,
        /// Identities in the row.
        identities: u64,
    },
    /// The answer decoded, but into values the query cannot produce (not ClickHouse's answer).
    #[error("ClickHouse answer cannot be decoded: {0}")]
    Malformed(String),
    /// The events table is missing or lacks a usable `timestamp` column.
    #[error("ClickHouse table `{table}`: {reason}")]
    Table {
        /// The configured table name.
        table: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// ClickHouse server error codes (`ErrorCodes.cpp`) worth another attempt: the
/// server, or a replica behind a `Distributed` table, is overloaded, restarting
/// or unreachable. Every other code (unknown table or column 60/47/16, syntax
/// 62, access 192/193/497/516, limits such as 158/241, ...) is permanent.
pub const TRANSIENT_SERVER_CODES: &[(u32, &str)] = &[
    (3, "UNEXPECTED_END_OF_FILE"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (236, "ABORTED"),
    (279, "ALL_CONNECTION_TRIES_FAILED"),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    (394, "QUERY_WAS_CANCELLED"),
    (425, "SYSTEM_ERROR"),
    (999, "KEEPER_EXCEPTION"),
];

/// The query's own `max_execution_time` ran out: class `timeout`, not retried.
const TIMEOUT_EXCEEDED: u32 = 159;

/// The server's error code in a ClickHouse error text (`Code: 60. DB::Exception ...`).
fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// True when a TLS error (a certificate the client does not trust) is behind `error`.
fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error skips its inner error in `source()` (and hyper-rustls wraps one
        // io::Error in another): look inside instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

impl Retryable for WarehouseError {
    fn class(&self) -> Class {
        use clickhouse::error::Error as Ch;
        match self {
            WarehouseError::Timeout(_) | WarehouseError::OutOfTime(_) => Class::Timeout,
            // A variant key that appeared during the query is read right on the next try.
            WarehouseError::UnresolvedVariant { .. } => Class::Transient,
            WarehouseError::Table { .. } | WarehouseError::Malformed(_) => Class::Permanent,
            WarehouseError::Query(error) => match error {
                // Refused, reset, cut short: the network, not the query. A certificate
                // the client does not trust stays untrusted, though.
                Ch::Network(inner) if is_tls_error(inner.as_ref()) => Class::Permanent,
                Ch::Network(_) => Class::Transient,
                Ch::TimedOut => Class::Timeout,
                Ch::BadResponse(message) => match server_code(message) {
                    Some(TIMEOUT_EXCEEDED) => Class::Timeout,
                    Some(code) if TRANSIENT_SERVER_CODES.iter().any(|(c, _)| *c == code) => {
                        Class::Transient
                    }
                    Some(_) => Class::Permanent,
                    // No server code: a proxy in front of ClickHouse answered. The crate
                    // gives the status line when the body is empty, else the body (a
                    // proxy's page names its status, e.g. `<title>503 Service ...`).
                    None if ["502 ", "503 ", "504 "].iter().any(|s| message.contains(s)) => {
                        Class::Transient
                    }
                    None => Class::Permanent,
                },
                // An answer that cannot be decoded will not decode better next time.
                _ => Class::Permanent,
            },
        }
    }

    fn out_of_time(allowed: Duration) -> Self {
        WarehouseError::OutOfTime(allowed)
    }
}

/// How the events table stores `timestamp`; decides how window bounds are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    /// `DateTime`: whole seconds.
    DateTime,
    /// `DateTime64(p)`: sub-second precision, compared in milliseconds.
    DateTime64,
}

impl TimestampKind {
    /// Reads a ClickHouse type name such as `DateTime64(3, 'UTC')`.
    pub fn from_type_name(type_name: &str) -> Option<Self> {
        let inner = type_name
            .strip_prefix("Nullable(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(type_name);
        if inner.starts_with("DateTime64") {
            Some(Self::DateTime64)
        } else if inner.starts_with("DateTime") {
            Some(Self::DateTime)
        } else {
            None
        }
    }
}

/// What one experiment's exposures are filtered on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `environment_key` of the experiment.
    pub environment_key: &'a str,
    /// `feature_name` of the experiment's flag.
    pub feature_name: &'a str,
}

/// `{filter}` is the same for both reads of the events table.
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
    SELECT
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
            sum({epoch}) AS checksum
        FROM ?
        WHERE {filter}
        GROUP BY sipHash128(identifier)
    )
    GROUP BY quarantined, bucket, code
) AS counts
ANY LEFT JOIN
(
    SELECT code, min(value) AS name, max(value) AS other_name, toUInt8(1) AS named
    FROM (SELECT value, cityHash64(value) AS code FROM ? WHERE {filter} GROUP BY value)
    GROUP BY code
) AS names USING code
ORDER BY bucket, variant";

/// The rows a refresh counts; bound twice, once per read of the events table.
/// `{bound}` turns a bound number into the column's type.
const FILTER: &str = "environment_key = ? AND event = ? AND feature_name = ?
          AND timestamp >= {bound} AND timestamp < {bound}
          AND identifier != ''";

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

/// How many rows arrived in `[base, end)`: a primary-key range, so it reads little.
const DELTA_ROWS_SQL: &str = "SELECT toUInt64(count()) FROM ? WHERE {delta}";

/// Mutations (`ALTER TABLE ... UPDATE/DELETE`) of the events table not finished,
/// or created since a time. Old and current servers list them in `system.mutations`.
const MUTATIONS_SQL: &str = "\
SELECT toUInt64(count()) FROM system.mutations
WHERE database = currentDatabase() AND table = ? AND (is_done = 0 OR create_time >= toDateTime(?))";

/// What a snapshot's window held when it was computed: its rows and a wrapping
/// sum of their timestamps (Unix seconds, or milliseconds on `DateTime64`).
/// Computed by the same read as the payload, so it describes exactly the data the
/// payload counts; a later read of the same window that finds other numbers
/// proves the window changed (a late insert, a deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Non-anonymous exposure rows of the experiment in the window.
    pub rows: u64,
    /// Wrapping sum of their timestamps.
    pub checksum: u64,
}

impl Fingerprint {
    fn add(self, rows: u64, checksum: u64) -> Self {
        Self {
            rows: self.rows.wrapping_add(rows),
            checksum: self.checksum.wrapping_add(checksum),
        }
    }
}

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

/// A bucket start sent as Unix seconds.
fn bucket_start(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(secs), 0).unwrap_or_default()
}

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

/// The ClickHouse side: a client built once per container, and the query.
pub struct Warehouse {
    client: clickhouse::Client,
    table: String,
    timeout: Duration,
    timestamp_kind: OnceCell<TimestampKind>,
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
        })
    }

    /// The exact query a refresh sends, with every value bound (for tests and benchmarks).
    pub fn exposures_query(
        &self,
        kind: TimestampKind,
        target: Target<'_>,
        window: &Window,
    ) -> clickhouse::query::Query {
        let width = window.granularity.seconds();
        // Binds follow the text: the bucket width twice, then each read of the table.
        let query = self
            .client
            .query(&render(EXPOSURES_SQL, kind))
            .bind(width)
            .bind(width);
        let query = self.bind_read(query, kind, target, window.start, window.end);
        self.bind_read(query, kind, target, window.start, window.end)
    }

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

    /// Binds the table and the filter of one read of `[from, to)`.
    fn bind_read(
        &self,
        query: clickhouse::query::Query,
        kind: TimestampKind,
        target: Target<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        let query = query
            .bind(Identifier(&self.table))
            .bind(target.environment_key)
            .bind(EXPOSURE_EVENT)
            .bind(target.feature_name);
        bind_time(bind_time(query, kind, from), kind, to)
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
        let query = self.exposures_query(kind, target, window);
        let rows = self.with_timeout(query.fetch_all::<BucketRow>()).await?;
        let fingerprint = fingerprint(&rows);
        Ok(Computed {
            counts: counts(rows)?,
            fingerprint,
        })
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

    /// Looked up once per container: the column type does not change under a running function.
    async fn timestamp_kind(&self) -> Result<TimestampKind, WarehouseError> {
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

    async fn with_timeout<T>(
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
    let tls = crate::tls::client_config(crate::tls::SslMode::VerifyFull, roots, VARIABLE)?;
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

/// The SQL text for the column's type: `{filter}` and `{delta}` are reads of the
/// experiment's rows, `{bound}` turns a bound number into the column's type,
/// `{epoch}` is a row's timestamp as an unsigned number (the fingerprint's unit).
fn render(template: &str, kind: TimestampKind) -> String {
    let (bound, epoch) = match kind {
        TimestampKind::DateTime => ("toDateTime(?)", "toUInt64(toUInt32(timestamp))"),
        TimestampKind::DateTime64 => (
            "fromUnixTimestamp64Milli(toInt64(?))",
            "toUInt64(toUnixTimestamp64Milli(timestamp))",
        ),
    };
    template
        .replace("{filter}", FILTER)
        .replace("{delta}", FILTER)
        .replace("{bound}", bound)
        .replace("{epoch}", epoch)
}

/// Binds one window bound in the column's unit.
fn bind_time(
    query: clickhouse::query::Query,
    kind: TimestampKind,
    t: DateTime<Utc>,
) -> clickhouse::query::Query {
    match kind {
        // A `DateTime` holds whole seconds, so `t >= x` is `t >= ceil(x)` and `t < y` is `t < ceil(y)`.
        TimestampKind::DateTime => query.bind(ceil_seconds(t)),
        TimestampKind::DateTime64 => query.bind(t.timestamp_millis()),
    }
}

fn ceil_seconds(t: DateTime<Utc>) -> i64 {
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn failures_are_classified() {
        use clickhouse::error::Error as Ch;
        let class = |e: Ch| WarehouseError::Query(e).class();
        let bad = |m: &str| class(Ch::BadResponse(m.into()));
        assert_eq!(
            bad("Code: 202. DB::Exception: Too many simultaneous queries. Maximum: 100"),
            Class::Transient
        );
        assert_eq!(
            bad("Code: 210, e.displayText() = DB::NetException: Connection reset by peer"),
            Class::Transient
        );
        assert_eq!(
            bad("Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist."),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 62. DB::Exception: Syntax error"),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 516. DB::Exception: default: Authentication failed"),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 159. DB::Exception: Timeout exceeded: elapsed 2.1 seconds"),
            Class::Timeout
        );
        assert_eq!(bad("503 Service Unavailable"), Class::Transient);
        assert_eq!(bad("502 Bad Gateway"), Class::Transient);
        assert_eq!(bad("504 Gateway Timeout"), Class::Transient);
        assert_eq!(bad("404 Not Found"), Class::Permanent);
        assert_eq!(
            bad("<html><head><title>503 Service Temporarily Unavailable</title></head></html>"),
            Class::Transient
        );
        assert_eq!(class(Ch::NotEnoughData), Class::Permanent);
        assert_eq!(
            class(Ch::Network("connection reset".into())),
            Class::Transient
        );
        // As hyper-rustls reports it: an io::Error around tokio-rustls' io::Error.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(class(Ch::Network(Box::new(tls))), Class::Permanent);
        assert_eq!(
            WarehouseError::Timeout(Duration::from_secs(1)).class(),
            Class::Timeout
        );
        assert_eq!(
            WarehouseError::out_of_time(Duration::from_secs(1)).class(),
            Class::Timeout
        );
        for (code, name) in TRANSIENT_SERVER_CODES {
            assert_eq!(
                bad(&format!("Code: {code}. DB::Exception: ({name})")),
                Class::Transient
            );
        }
    }

    #[test]
    fn timestamp_kinds() {
        assert_eq!(
            TimestampKind::from_type_name("DateTime"),
            Some(TimestampKind::DateTime)
        );
        assert_eq!(
            TimestampKind::from_type_name("DateTime('Asia/Kolkata')"),
            Some(TimestampKind::DateTime)
        );
        assert_eq!(
            TimestampKind::from_type_name("DateTime64(3, 'UTC')"),
            Some(TimestampKind::DateTime64)
        );
        assert_eq!(
            TimestampKind::from_type_name("Nullable(DateTime64(3))"),
            Some(TimestampKind::DateTime64)
        );
        assert_eq!(TimestampKind::from_type_name("String"), None);
    }

    #[test]
    fn whole_second_bounds_round_up() {
        let t = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        assert_eq!(ceil_seconds(t), t.timestamp());
        assert_eq!(
            ceil_seconds(t + chrono::TimeDelta::milliseconds(1)),
            t.timestamp() + 1
        );
    }

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
