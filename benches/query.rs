//! Benchmark of the warehouse query (issue 5): `scripts/bench.sh` runs it.
//!
//! Loads a synthetic dataset (`benches/generate.sql`, generated inside ClickHouse)
//! into the project's local ClickHouse 18.16 server and into chDB (the current
//! engine, through `scripts/bench_chdb.py`), then times, on the same data and
//! engine, interleaved, after a warm-up:
//!
//! - `baseline`: the straightforward formulation (`uniqExact(value) > 1`,
//!   `any(value)`, `min(timestamp)` per identifier, then per bucket);
//! - `project`: the exact query the function sends, from
//!   `Warehouse::exposures_query` with the function's client settings;
//! - `floor`: a filtered scan of the same columns over the same window, no
//!   grouping by identity;
//! - `group-by-id`: `GROUP BY identifier` with no aggregate state at all, the
//!   least any exact per-identity plan has to do (for the explanation);
//! - with `--alternatives`, the query shapes that were measured and not adopted.
//!
//! Time and peak memory come from `system.query_log` (`query_duration_ms`,
//! `memory_usage`, CPU from `ProfileEvents`). Every query returning buckets is
//! decoded into a `Payload` and must equal the project's, on both engines.
//! Exits non-zero when a required target fails or a result differs.
//!
//! `--large` instead loads 100 million events (10 million identities) into a
//! separate database and runs the function's query under its memory settings
//! (issue 5, item 4).
//!
//! Arguments (after `cargo bench --bench query --`): `--runs N` (default 5),
//! `--alternatives`, `--no-chdb`, `--large`, `--large-events N`.
//! Environment: `EXPOSURES_BENCH_CLICKHOUSE_URL` (default `http://127.0.0.1:18123`),
//! `EXPOSURES_PYTHON` (default `python3`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use clickhouse::sql::Identifier;
use exposures::summary::Payload;
use exposures::warehouse::{BucketRow, Target, TimestampKind, Warehouse, EXPOSURE_EVENT};
use exposures::window::Window;
use exposures::Config;
use serde::Deserialize;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[path = "query/cluster.rs"]
mod cluster;
#[path = "../tests/it/cluster_nodes.rs"]
mod cluster_nodes;
#[path = "query/incremental.rs"]
mod incremental;

const GENERATE_SQL: &str = include_str!("generate.sql");
const DDL_OLD: &str = include_str!("../migrations/clickhouse/events_clickhouse_18.sql");
const DDL_REFERENCE: &str = include_str!("../migrations/clickhouse/events.sql");

/// 2026-06-01T00:00:00Z, start of every benchmark window.
const START: i64 = 1_780_272_000;
const ENVIRONMENT: &str = "production";
const FEATURE: &str = "checkout-redesign";
const TABLE: &str = "events";

/// Required: project time <= 1/3 of baseline, peak memory <= 1/2; stretch: <= 3x floor.
const MAX_TIME_VS_BASELINE: f64 = 1.0 / 3.0;
const MAX_MEMORY_VS_BASELINE: f64 = 0.5;
const MAX_TIME_VS_FLOOR: f64 = 3.0;

#[derive(Debug, Clone)]
struct Dataset {
    database: String,
    events: u64,
    identities: u64,
    days: i64,
}

impl Dataset {
    fn standard() -> Self {
        Self {
            database: "exposures_bench".into(),
            events: 20_000_000,
            identities: 2_000_000,
            days: 14,
        }
    }

    fn large(events: u64) -> Self {
        Self {
            database: "exposures_bench_large".into(),
            events,
            identities: events / 10,
            days: 28,
        }
    }

    fn noise(&self) -> u64 {
        self.events / 20
    }

    fn total_rows(&self) -> u64 {
        self.events + self.noise()
    }

    fn quarantined(&self) -> u64 {
        self.identities / 100
    }

    fn window(&self) -> Window {
        let start = DateTime::from_timestamp(START, 0).expect("valid start");
        let end = start + TimeDelta::days(self.days);
        Window::new(start, Some(end), end)
    }

    /// The generator SQL; `timestamp` turns the `ts` (seconds) and `h` (hash) columns into the column type.
    fn generate_sql(&self, table: &str, timestamp: &str) -> String {
        let sql: String = GENERATE_SQL
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        sql.replace("{table}", table)
            .replace("{timestamp}", timestamp)
            .replace("{events}", &self.events.to_string())
            .replace("{identities}", &self.identities.to_string())
            .replace("{quarantined}", &self.quarantined().to_string())
            .replace("{start}", &START.to_string())
            .replace("{seconds}", &(self.days * 86_400).to_string())
            .replace("{total}", &self.total_rows().to_string())
    }

    fn describe(&self) -> String {
        format!(
            "{} exposure events in the window ({} identities, {} quarantined, {} days) + {} rows to filter out",
            group(self.events),
            group(self.identities),
            group(self.quarantined()),
            self.days,
            group(self.noise())
        )
    }
}

/// DDL without comments, for `table`.
fn ddl(source: &str, table: &str) -> String {
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "CREATE TABLE IF NOT EXISTS events",
            &format!("CREATE TABLE {table}"),
        )
}

/// FNV-1a: a stable fingerprint of what was loaded, so reruns reuse the data.
fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Which engine a query runs on, for the SQL that differs by column type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Server,
    Chdb,
}

impl Engine {
    fn kind(self) -> TimestampKind {
        match self {
            Engine::Server => TimestampKind::DateTime,
            Engine::Chdb => TimestampKind::DateTime64,
        }
    }
}

/// What a benchmarked query returns, so its result can be checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Buckets,
    Scan,
    Count,
}

/// A query of the comparison other than the project's own.
struct Reference {
    name: &'static str,
    shape: Shape,
    sql: &'static str,
    about: &'static str,
}

/// The filter every query shares; `{lower}`/`{upper}` as in the function.
const FILTER: &str = "environment_key = ? AND event = ? AND feature_name = ?
      AND timestamp >= {lower} AND timestamp < {upper}
      AND identifier != ''";

const BASELINE: Reference = Reference {
    name: "baseline",
    shape: Shape::Buckets,
    about: "straightforward: uniqExact(value) > 1, any(value), min(timestamp) per identifier",
    sql: "\
SELECT
    toUInt8(quarantined) AS quarantined,
    toUInt32(if(quarantined, 0, intDiv(toUInt32(toDateTime(first_seen)), ?) * ?)) AS bucket,
    if(quarantined, '', variant) AS variant,
    toUInt64(count()) AS identities
FROM
(
    SELECT
        uniqExact(value) > 1 AS quarantined,
        any(value) AS variant,
        min(timestamp) AS first_seen
    FROM ?
    WHERE {filter}
    GROUP BY identifier
)
GROUP BY quarantined, bucket, variant
ORDER BY bucket, variant",
};

const FLOOR: Reference = Reference {
    name: "floor",
    shape: Shape::Scan,
    about: "filtered scan reading identifier, value, timestamp over the window; count, any, min; no grouping",
    sql: "\
SELECT
    toUInt64(count()) AS rows,
    toUInt32(toDateTime(min(timestamp))) AS first,
    any(identifier) AS some_identifier,
    any(value) AS some_value
FROM ?
WHERE {filter}",
};

const GROUP_BY_ID: Reference = Reference {
    name: "group-by-id",
    shape: Shape::Count,
    about:
        "GROUP BY identifier with no aggregate state (least work of any exact per-identity plan)",
    sql: "\
SELECT toUInt64(count()) AS identities
FROM (SELECT count() AS n FROM ? WHERE {filter} GROUP BY identifier)",
};

const FINGERPRINT_MIN: Reference = Reference {
    name: "fingerprint-min",
    shape: Shape::Count,
    about:
        "GROUP BY sipHash128(identifier) with min(timestamp) only (least work of any plan keyed \
            on the 128-bit fingerprint: no variant, no quarantine)",
    // The outer filter uses `first_seen`, so the server cannot drop the aggregate.
    sql: "\
SELECT toUInt64(countIf(toUInt32(toDateTime(first_seen)) > 0)) AS identities
FROM (SELECT min(timestamp) AS first_seen FROM ? WHERE {filter} GROUP BY sipHash128(identifier))",
};

/// Shapes measured and not adopted (`--alternatives`); see the README's Performance section.
const ALTERNATIVES: [Reference; 3] = [
    Reference {
        name: "alt-string-key",
        shape: Shape::Buckets,
        about: "the previous project query: GROUP BY identifier (the string), min(timestamp), \
                min(value) and max(value)",
        sql: "\
SELECT
    toUInt8(min_value != max_value) AS quarantined,
    toUInt32(if(min_value = max_value, intDiv(toUInt32(toDateTime(first_seen)), ?) * ?, 0)) AS bucket,
    if(min_value = max_value, min_value, '') AS variant,
    toUInt64(count()) AS identities
FROM
(
    SELECT min(timestamp) AS first_seen, min(value) AS min_value, max(value) AS max_value
    FROM ?
    WHERE {filter}
    GROUP BY identifier
)
GROUP BY quarantined, bucket, variant
ORDER BY bucket, variant",
    },
    Reference {
        name: "alt-dictionary",
        shape: Shape::Buckets,
        about: "variants dictionary-encoded by a scalar subquery: numeric min/max states",
        sql: "\
SELECT
    toUInt8(lo != hi) AS quarantined,
    toUInt32(if(lo = hi, intDiv(toUInt32(toDateTime(first_seen)), ?) * ?, 0)) AS bucket,
    variant,
    toUInt64(count()) AS identities
FROM
(
    SELECT
        min(timestamp) AS first_seen,
        min(toUInt32(indexOf((SELECT arraySort(groupUniqArray(value)) FROM ? WHERE {filter}) AS variants, value)) AS vi) AS lo,
        max(vi) AS hi,
        if(lo = hi, variants[lo], '') AS variant
    FROM ?
    WHERE {filter}
    GROUP BY identifier
)
GROUP BY quarantined, bucket, variant
ORDER BY bucket, variant",
    },
    Reference {
        name: "alt-id-value",
        shape: Shape::Buckets,
        about: "two-level: GROUP BY identifier, value, then GROUP BY identifier",
        sql: "\
SELECT
    toUInt8(n > 1) AS quarantined,
    toUInt32(if(n = 1, intDiv(toUInt32(toDateTime(first_seen)), ?) * ?, 0)) AS bucket,
    if(n = 1, variant, '') AS variant,
    toUInt64(count()) AS identities
FROM
(
    SELECT count() AS n, min(first_seen) AS first_seen, any(value) AS variant
    FROM
    (
        SELECT identifier, value, min(timestamp) AS first_seen
        FROM ?
        WHERE {filter}
        GROUP BY identifier, value
    )
    GROUP BY identifier
)
GROUP BY quarantined, bucket, variant
ORDER BY bucket, variant",
    },
];

impl Reference {
    /// Binds the reference query the way the function binds its own.
    fn query(
        &self,
        client: &clickhouse::Client,
        engine: Engine,
        window: &Window,
    ) -> clickhouse::query::Query {
        let (lower, upper) = match engine.kind() {
            TimestampKind::DateTime => ("toDateTime(?)", "toDateTime(?)"),
            TimestampKind::DateTime64 => (
                "fromUnixTimestamp64Milli(toInt64(?))",
                "fromUnixTimestamp64Milli(toInt64(?))",
            ),
        };
        let filter = FILTER.replace("{lower}", lower).replace("{upper}", upper);
        let sql = self.sql.replace("{filter}", &filter);
        let mut query = client.query(&sql);
        let width = window.granularity.seconds();
        let bind_filter = |q: clickhouse::query::Query| {
            let q = q.bind(ENVIRONMENT).bind(EXPOSURE_EVENT).bind(FEATURE);
            match engine.kind() {
                TimestampKind::DateTime => q
                    .bind(window.start.timestamp())
                    .bind(window.end.timestamp()),
                TimestampKind::DateTime64 => q
                    .bind(window.start.timestamp_millis())
                    .bind(window.end.timestamp_millis()),
            }
        };
        if self.shape == Shape::Buckets {
            query = query.bind(width).bind(width);
        }
        // One `FROM ? WHERE filter` per table reference, in order.
        for _ in 0..self.sql.matches("FROM ?").count() {
            query = bind_filter(query.bind(Identifier(TABLE)));
        }
        query
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ScanRow {
    rows: u64,
    #[allow(dead_code)]
    first: u32,
    #[allow(dead_code)]
    some_identifier: String,
    #[allow(dead_code)]
    some_value: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Setting {
    name: String,
    value: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LogRow {
    query_id: String,
    duration_ms: u64,
    memory: u64,
    read_rows: u64,
    cpu_us: u64,
    spilled_parts: u64,
}

/// One timed execution, from `system.query_log`.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    duration_ms: f64,
    memory: f64,
    read_rows: f64,
    cpu_ms: f64,
    spilled_parts: f64,
}

/// Medians of the timed runs of one query.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    runs: usize,
    duration_ms: f64,
    cpu_ms: f64,
    memory: f64,
    read_rows: f64,
    spilled_parts: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stats(runs: &[Run]) -> Stats {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Stats {
        runs: runs.len(),
        duration_ms: m(|r| r.duration_ms),
        cpu_ms: m(|r| r.cpu_ms),
        memory: m(|r| r.memory),
        read_rows: m(|r| r.read_rows),
        spilled_parts: m(|r| r.spilled_parts),
    }
}

/// Results of one engine.
struct EngineResult {
    label: String,
    order: Vec<String>,
    about: BTreeMap<String, String>,
    stats: BTreeMap<String, Stats>,
    payload: Option<Payload>,
    mismatches: Vec<String>,
}

impl EngineResult {
    fn ratio(&self, a: &str, b: &str, f: fn(&Stats) -> f64) -> f64 {
        match (self.stats.get(a), self.stats.get(b)) {
            (Some(x), Some(y)) => f(x) / f(y),
            _ => f64::NAN,
        }
    }
}

struct Args {
    runs: usize,
    alternatives: bool,
    chdb: bool,
    large: bool,
    large_events: u64,
    incremental: bool,
    cluster: bool,
}

fn parse_args() -> Res<Option<Args>> {
    let mut args = Args {
        runs: 5,
        alternatives: false,
        chdb: true,
        large: false,
        large_events: 100_000_000,
        incremental: false,
        cluster: false,
    };
    let mut bench = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // `cargo bench` passes --bench; `cargo test --all-targets` does not.
            "--bench" => bench = true,
            "--runs" => args.runs = it.next().ok_or("--runs N")?.parse()?,
            "--alternatives" => args.alternatives = true,
            "--no-chdb" => args.chdb = false,
            "--large" => args.large = true,
            "--incremental" => args.incremental = true,
            "--cluster" => args.cluster = true,
            "--large-events" => args.large_events = it.next().ok_or("--large-events N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !bench {
        return Ok(None);
    }
    if args.runs < 5 {
        return Err("--runs must be at least 5 (medians of at least 5 timed runs)".into());
    }
    Ok(Some(args))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!(
                "benches/query.rs: run it with `scripts/bench.sh` (or `cargo bench --bench query`)"
            );
            return;
        }
        Err(e) => {
            eprintln!("benches/query.rs: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let result = if args.cluster {
            cluster::run(&args).await
        } else if args.incremental {
            incremental::run(&args).await
        } else if args.large {
            large(&args).await
        } else {
            compare(&args).await
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("benches/query.rs: error: {e}");
                2
            }
        }
    });
    std::process::exit(code);
}

fn server_url() -> String {
    std::env::var("EXPOSURES_BENCH_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// The function's own `Warehouse` (its client settings), on the benchmark database.
fn warehouse(database: &str) -> Res<Warehouse> {
    let url = server_url();
    let config = Config::from_lookup(|name| match name {
        "CLICKHOUSE_URL" => Some(url.clone()),
        "CLICKHOUSE_DATABASE" => Some(database.to_owned()),
        "EXPOSURES_EVENTS_TABLE" => Some(TABLE.to_owned()),
        // The function's default unless the caller sets it (larger `--large` sizes on this machine).
        "EXPOSURES_QUERY_TIMEOUT_SECONDS" => std::env::var(name).ok(),
        _ => None,
    })?;
    Ok(Warehouse::new(&config)?)
}

fn target() -> Target<'static> {
    Target {
        environment_key: ENVIRONMENT,
        feature_name: FEATURE,
    }
}

fn admin() -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(server_url())
        .with_validation(false)
}

/// Loads `dataset` into the server unless the same data is already there.
async fn ensure_server_data(client: &clickhouse::Client, dataset: &Dataset) -> Res<()> {
    let table = format!("{}.{TABLE}", dataset.database);
    let generate = dataset.generate_sql(&table, "toDateTime(ts)");
    load_once(
        client,
        &dataset.database,
        ddl(DDL_OLD, &table),
        &[generate],
        dataset.total_rows(),
        &dataset.describe(),
    )
    .await
}

/// Creates `{db}.events` with `create` and runs `inserts` (the first one is
/// compacted before the others run), unless the same load is already there.
async fn load_once(
    client: &clickhouse::Client,
    db: &str,
    create: String,
    inserts: &[String],
    total_rows: u64,
    describe: &str,
) -> Res<()> {
    let table = format!("{db}.{TABLE}");
    let mut parts: Vec<&str> = vec![&inserts[0], &create];
    parts.extend(inserts[1..].iter().map(String::as_str));
    let print = fingerprint(&parts);
    // Absent table: not loaded yet.
    let loaded = client
        .query(&format!("SELECT fingerprint FROM {db}.bench_meta"))
        .fetch_optional::<String>()
        .await
        .ok()
        .flatten();
    if loaded.as_deref() == Some(print.as_str()) {
        let rows: u64 = client
            .query(&format!("SELECT count() FROM {table}"))
            .fetch_one()
            .await?;
        if rows == total_rows {
            log(format!("server: reusing {table} ({} rows)", group(rows)));
            return Ok(());
        }
    }
    log(format!("server: loading {table}: {describe}"));
    let started = Instant::now();
    let mut statements = vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!("DROP TABLE IF EXISTS {db}.bench_meta"),
        format!("DROP TABLE IF EXISTS {table}"),
        create,
        inserts[0].clone(),
        format!("OPTIMIZE TABLE {table} FINAL"),
    ];
    statements.extend(inserts[1..].iter().cloned());
    statements.push(format!(
        "CREATE TABLE {db}.bench_meta (fingerprint String) ENGINE = TinyLog"
    ));
    statements.push(format!("INSERT INTO {db}.bench_meta VALUES ('{print}')"));
    for sql in statements {
        client.query(&sql).execute().await?;
    }
    log(format!(
        "server: loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Finished queries of `system.query_log` as `LogRow`s; `{where}` selects them.
const QUERY_LOG_SQL: &str =
    "SELECT query_id, toUInt64(query_duration_ms) AS duration_ms, toUInt64(memory_usage) AS memory,
            toUInt64(read_rows) AS read_rows,
            toUInt64(ProfileEvents.Values[indexOf(ProfileEvents.Names, 'UserTimeMicroseconds')]
                   + ProfileEvents.Values[indexOf(ProfileEvents.Names, 'SystemTimeMicroseconds')]) AS cpu_us,
            toUInt64(ProfileEvents.Values[indexOf(ProfileEvents.Names, 'ExternalAggregationWritePart')]) AS spilled_parts
     FROM system.query_log
     WHERE type = 2 AND {where}";

async fn flush_and_read_log(client: &clickhouse::Client, prefix: &str) -> Res<Vec<LogRow>> {
    client.query("SYSTEM FLUSH LOGS").execute().await?;
    let rows = client
        .query(&QUERY_LOG_SQL.replace("{where}", "startsWith(query_id, ?)"))
        .bind(prefix)
        .fetch_all::<LogRow>()
        .await?;
    Ok(rows)
}

fn run_of(row: &LogRow) -> Run {
    Run {
        duration_ms: row.duration_ms as f64,
        memory: row.memory as f64,
        read_rows: row.read_rows as f64,
        cpu_ms: row.cpu_us as f64 / 1000.0,
        spilled_parts: row.spilled_parts as f64,
    }
}

/// The project's rows, read the way the function reads them.
fn payload_of(window: &Window, rows: Vec<BucketRow>) -> Res<Payload> {
    Ok(Payload::build(
        window.granularity,
        exposures::warehouse::counts(rows)?,
    ))
}

/// A row of a reference bucket query (the project's shape without `unresolved`).
#[derive(Debug, clickhouse::Row, Deserialize)]
struct ReferenceRow {
    quarantined: u8,
    bucket: u32,
    variant: String,
    identities: u64,
}

fn reference_payload(window: &Window, rows: Vec<ReferenceRow>) -> Res<Payload> {
    payload_of(
        window,
        rows.into_iter()
            .map(|r| BucketRow {
                quarantined: r.quarantined,
                bucket: r.bucket,
                variant: r.variant,
                identities: r.identities,
                unresolved: 0,
                window_rows: 0,
                window_checksum: 0,
            })
            .collect(),
    )
}

/// The result of one execution on the server, checked against the dataset.
enum Outcome {
    Buckets(Payload),
    Scanned(u64),
    Counted(u64),
}

async fn execute_server(
    name: &str,
    warehouse: &Warehouse,
    client: &clickhouse::Client,
    references: &[&Reference],
    window: &Window,
    query_id: &str,
) -> Res<Outcome> {
    let tag = |q: clickhouse::query::Query| {
        q.with_setting("query_id", query_id)
            .with_setting("log_queries", "1")
    };
    if name == "project" {
        let query = warehouse.exposures_query(TimestampKind::DateTime, target(), window);
        let rows = tag(query).fetch_all::<BucketRow>().await?;
        return Ok(Outcome::Buckets(payload_of(window, rows)?));
    }
    let reference = references
        .iter()
        .find(|r| r.name == name)
        .ok_or("unknown query")?;
    let query = tag(reference.query(client, Engine::Server, window));
    Ok(match reference.shape {
        Shape::Buckets => Outcome::Buckets(reference_payload(window, query.fetch_all().await?)?),
        Shape::Scan => Outcome::Scanned(query.fetch_one::<ScanRow>().await?.rows),
        Shape::Count => Outcome::Counted(query.fetch_one::<u64>().await?),
    })
}

/// Checks a result against the dataset and the project's payload; returns what differs.
fn check(
    name: &str,
    outcome: &Outcome,
    dataset: &Dataset,
    reference: Option<&Payload>,
) -> Option<String> {
    match outcome {
        Outcome::Buckets(payload) => {
            if let Some(expected) = reference {
                if payload != expected {
                    return Some(format!("{name}: summary differs from the project's"));
                }
            }
            let counted = payload.identities() + payload.excluded_identities;
            (payload.excluded_identities != dataset.quarantined() || counted != dataset.identities)
                .then(|| {
                    format!(
                        "{name}: {} identities, {} excluded; the dataset has {} and {}",
                        counted,
                        payload.excluded_identities,
                        dataset.identities,
                        dataset.quarantined()
                    )
                })
        }
        Outcome::Scanned(rows) => (*rows != dataset.events)
            .then(|| format!("{name}: scanned {rows} rows, expected {}", dataset.events)),
        Outcome::Counted(n) => (*n != dataset.identities)
            .then(|| format!("{name}: {n} identities, expected {}", dataset.identities)),
    }
}

async fn server_half(
    args: &Args,
    dataset: &Dataset,
    references: &[&Reference],
) -> Res<EngineResult> {
    let client = admin();
    let version: String = client.query("SELECT version()").fetch_one().await?;
    ensure_server_data(&client, dataset).await?;
    let warehouse = warehouse(&dataset.database)?;
    let scoped = client.clone().with_database(&dataset.database);
    let window = dataset.window();

    let mut names = vec!["baseline".to_owned(), "project".to_owned()];
    names.extend(
        references
            .iter()
            .filter(|r| r.name != "baseline")
            .map(|r| r.name.to_owned()),
    );
    let prefix = format!("exposures-bench-{}-", Utc::now().timestamp_millis());
    let mut expected: Option<Payload> = None;
    let mut mismatches = Vec::new();
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();

    // Round 0 is the warm-up (not timed); then `runs` rounds, the order rotated each round.
    for round in 0..=args.runs {
        for k in 0..names.len() {
            let name = &names[(k + round) % names.len()];
            let query_id = format!("{prefix}{name}-{round}");
            let started = Instant::now();
            let outcome =
                execute_server(name, &warehouse, &scoped, references, &window, &query_id).await?;
            if round == 0 {
                log(format!(
                    "server: warm-up {name}: {:.2} s",
                    started.elapsed().as_secs_f64()
                ));
            } else {
                ids.entry(name.clone()).or_default().push(query_id);
            }
            if name == "project" && expected.is_none() {
                if let Outcome::Buckets(p) = &outcome {
                    expected = Some(p.clone());
                }
            }
            let against = if name == "project" {
                None
            } else {
                expected.as_ref()
            };
            if let Some(m) = check(name, &outcome, dataset, against) {
                if !mismatches.contains(&m) {
                    mismatches.push(m);
                }
            }
        }
        if round > 0 {
            log(format!("server: round {round}/{} done", args.runs));
        }
    }

    let logged = flush_and_read_log(&client, &prefix).await?;
    let mut stats_by = BTreeMap::new();
    for (name, query_ids) in &ids {
        let runs: Vec<Run> = logged
            .iter()
            .filter(|r| query_ids.contains(&r.query_id))
            .map(run_of)
            .collect();
        if runs.len() != query_ids.len() {
            return Err(format!(
                "system.query_log has {} of {} runs of {name}",
                runs.len(),
                query_ids.len()
            )
            .into());
        }
        stats_by.insert(name.clone(), stats(&runs));
    }
    Ok(EngineResult {
        label: format!("ClickHouse {version} (server, Debian package)"),
        about: about_map(references),
        order: names,
        stats: stats_by,
        payload: expected,
        mismatches,
    })
}

fn about_map(references: &[&Reference]) -> BTreeMap<String, String> {
    let mut about: BTreeMap<String, String> = references
        .iter()
        .map(|r| (r.name.to_owned(), r.about.to_owned()))
        .collect();
    about.insert(
        "project".into(),
        "the function's query: Warehouse::exposures_query with its client settings".into(),
    );
    about
}

/// The chDB half: the same queries rendered for the reference DDL (DateTime64(3)), run by scripts/bench_chdb.py.
async fn chdb_half(args: &Args, dataset: &Dataset, references: &[&Reference]) -> Res<EngineResult> {
    let warehouse = warehouse(&dataset.database)?;
    let client = clickhouse::Client::default();
    let window = dataset.window();
    let table = format!("{}.{TABLE}", dataset.database);
    let generate = dataset.generate_sql(
        &table,
        "fromUnixTimestamp64Milli(toInt64(ts * 1000 + h % 1000), 'UTC')",
    );
    let create = ddl(DDL_REFERENCE, &table);
    let mut queries = vec![
        json!({"name": "baseline", "sql": BASELINE.query(&client, Engine::Chdb, &window).sql_display().to_string()}),
        json!({"name": "project", "sql": warehouse
            .exposures_query(TimestampKind::DateTime64, target(), &window)
            .sql_display()
            .to_string(),
            // The function's memory settings travel with its query, as on the server.
            "settings": exposures::warehouse::MEMORY_SETTINGS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()}),
    ];
    for r in references.iter().filter(|r| r.name != "baseline") {
        queries.push(json!({"name": r.name, "sql": r.query(&client, Engine::Chdb, &window).sql_display().to_string()}));
    }
    let plan = json!({
        "path": repo().join("target/bench/chdb").to_string_lossy(),
        "database": dataset.database,
        "ddl": create,
        "generate": generate,
        "fingerprint": fingerprint(&[&generate, &create]),
        "total_rows": dataset.total_rows(),
        "runs": args.runs,
        // Not UTC, like the test server: buckets must still be UTC.
        "session_timezone": "Asia/Kolkata",
        "queries": queries,
    });
    let answer = run_bench_chdb(&plan)?;

    let mut names = vec!["baseline".to_owned(), "project".to_owned()];
    names.extend(
        references
            .iter()
            .filter(|r| r.name != "baseline")
            .map(|r| r.name.to_owned()),
    );
    let mut stats_by = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut outcomes = BTreeMap::new();
    for name in &names {
        let q = &answer["queries"][name];
        let runs: Vec<Run> = q["runs"]
            .as_array()
            .ok_or_else(|| format!("chdb: no runs of {name}"))?
            .iter()
            .map(|r| Run {
                duration_ms: r["duration_ms"].as_f64().unwrap_or(f64::NAN),
                memory: r["memory"].as_f64().unwrap_or(f64::NAN),
                read_rows: r["read_rows"].as_f64().unwrap_or(f64::NAN),
                cpu_ms: r["cpu_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
                spilled_parts: r["spilled_parts"].as_f64().unwrap_or(0.0),
            })
            .collect();
        stats_by.insert(name.clone(), stats(&runs));
        let rows = q["rows"].clone();
        let shape = if name == "baseline" || name == "project" {
            Shape::Buckets
        } else {
            references
                .iter()
                .find(|r| r.name == name)
                .map_or(Shape::Buckets, |r| r.shape)
        };
        let outcome = match shape {
            Shape::Buckets if name == "project" => {
                Outcome::Buckets(payload_of(&window, serde_json::from_value(rows)?)?)
            }
            Shape::Buckets => {
                Outcome::Buckets(reference_payload(&window, serde_json::from_value(rows)?)?)
            }
            Shape::Scan => Outcome::Scanned(rows[0]["rows"].as_u64().unwrap_or(0)),
            Shape::Count => Outcome::Counted(rows[0]["identities"].as_u64().unwrap_or(0)),
        };
        outcomes.insert(name.clone(), outcome);
    }
    let expected = match outcomes.get("project") {
        Some(Outcome::Buckets(p)) => Some(p.clone()),
        _ => None,
    };
    for name in &names {
        let against = if name == "project" {
            None
        } else {
            expected.as_ref()
        };
        if let Some(m) = check(name, &outcomes[name], dataset, against) {
            mismatches.push(m);
        }
    }
    Ok(EngineResult {
        label: format!(
            "ClickHouse {} (chDB, in process)",
            answer["version"].as_str().unwrap_or("?")
        ),
        about: about_map(references),
        order: names,
        stats: stats_by,
        payload: expected,
        mismatches,
    })
}

/// Runs `plan` through scripts/bench_chdb.py and returns its answer.
fn run_bench_chdb(plan: &Value) -> Res<Value> {
    let python = std::env::var("EXPOSURES_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repo().join("scripts/bench_chdb.py");
    log("chdb: running scripts/bench_chdb.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()))?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(plan.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err("scripts/bench_chdb.py failed (pip install chdb-core?)".into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn mib(bytes: f64) -> f64 {
    bytes / 1_048_576.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn report(
    args: &Args,
    dataset: &Dataset,
    engines: &[EngineResult],
    cross_engine: Option<bool>,
) -> (String, bool) {
    let mut out = String::new();
    let mut required_ok = true;
    let _ = writeln!(out, "Dataset: {}.", dataset.describe());
    let _ = writeln!(
        out,
        "Window: {} .. {} ({} buckets); median of {} timed runs after a warm-up, queries interleaved.",
        dataset.window().start.format("%Y-%m-%dT%H:%M:%SZ"),
        dataset.window().end.format("%Y-%m-%dT%H:%M:%SZ"),
        dataset.window().granularity.as_str(),
        args.runs
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| engine | query | time ms | CPU ms | peak memory MiB | rows read | time / baseline | memory / baseline | time / floor |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for e in engines {
        for name in &e.order {
            let s = &e.stats[name];
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.1} | {} | {:.2} | {:.2} | {:.2} |",
                e.label,
                name,
                s.duration_ms,
                s.cpu_ms,
                mib(s.memory),
                group(s.read_rows as u64),
                e.ratio(name, "baseline", |s| s.duration_ms),
                e.ratio(name, "baseline", |s| s.memory),
                e.ratio(name, "floor", |s| s.duration_ms),
            );
        }
    }
    let _ = writeln!(out);
    for e in engines {
        let time = e.ratio("project", "baseline", |s| s.duration_ms);
        let memory = e.ratio("project", "baseline", |s| s.memory);
        let floor = e.ratio("project", "floor", |s| s.duration_ms);
        let exact = e.mismatches.is_empty();
        required_ok &= time <= MAX_TIME_VS_BASELINE && memory <= MAX_MEMORY_VS_BASELINE && exact;
        let _ = writeln!(out, "{}:", e.label);
        let _ = writeln!(
            out,
            "  project time / baseline   = {time:.2} (required <= {MAX_TIME_VS_BASELINE:.2}): {}",
            verdict(time <= MAX_TIME_VS_BASELINE)
        );
        let _ = writeln!(
            out,
            "  project memory / baseline = {memory:.2} (required <= {MAX_MEMORY_VS_BASELINE:.2}): {}",
            verdict(memory <= MAX_MEMORY_VS_BASELINE)
        );
        let _ = writeln!(
            out,
            "  project time / floor      = {floor:.2} (stretch <= {MAX_TIME_VS_FLOOR:.0}): {}",
            verdict(floor <= MAX_TIME_VS_FLOOR)
        );
        if let Some(p) = e.stats.get("project") {
            let _ = writeln!(
                out,
                "  project spilled to disk (external aggregation parts): {:.0}",
                p.spilled_parts
            );
        }
        if exact {
            let _ = writeln!(
                out,
                "  exact: every bucket query gave the project's summary ({} identities counted, {} excluded)",
                e.payload.as_ref().map_or(0, Payload::identities),
                e.payload.as_ref().map_or(0, |p| p.excluded_identities)
            );
        } else {
            for m in &e.mismatches {
                let _ = writeln!(out, "  RESULT MISMATCH: {m}");
            }
        }
    }
    if let Some(same) = cross_engine {
        required_ok &= same;
        let _ = writeln!(
            out,
            "Both engines: project summaries {}.",
            if same { "identical" } else { "DIFFER" }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Queries:");
    if let Some(e) = engines.first() {
        for name in &e.order {
            let _ = writeln!(
                out,
                "  {name}: {}",
                e.about.get(name).map_or("", String::as_str)
            );
        }
    }
    (out, required_ok)
}

async fn compare(args: &Args) -> Res<i32> {
    let dataset = Dataset::standard();
    let mut references = vec![&BASELINE, &FLOOR, &GROUP_BY_ID, &FINGERPRINT_MIN];
    if args.alternatives {
        references.extend(ALTERNATIVES.iter());
    }
    let started = Instant::now();
    let mut engines = vec![server_half(args, &dataset, &references).await?];
    if args.chdb {
        engines.push(chdb_half(args, &dataset, &references).await?);
    }
    let cross = (engines.len() == 2)
        .then(|| engines[0].payload.is_some() && engines[0].payload == engines[1].payload);
    let (text, ok) = report(args, &dataset, &engines, cross);
    println!("{text}");
    println!("Finished in {:.0} s.", started.elapsed().as_secs_f64());
    save("query", &text)?;
    Ok(if ok { 0 } else { 1 })
}

fn save(name: &str, text: &str) -> Res<()> {
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    std::fs::write(dir.join(format!("{name}-{stamp}.md")), text)?;
    std::fs::write(dir.join(format!("{name}-latest.md")), text)?;
    log(format!("saved target/bench/{name}-latest.md"));
    Ok(())
}

/// Free space of the file system holding `path`, in bytes (`df`).
fn free_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Item 4: a window of `--large-events` events under the function's memory settings.
async fn large(args: &Args) -> Res<i32> {
    let dataset = Dataset::large(args.large_events);
    let client = admin();
    let version: String = client.query("SELECT version()").fetch_one().await?;
    // About 45 bytes per row on disk, twice during OPTIMIZE, plus spilled aggregation state.
    let need = dataset.total_rows() * 45 * 2 + 4 * (1 << 30);
    if let Some(free) = free_bytes(&repo().join("target")) {
        if free < need {
            return Err(format!(
                "--large needs about {} GiB free under target/, {} GiB available",
                need >> 30,
                free >> 30
            )
            .into());
        }
    }
    ensure_server_data(&client, &dataset).await?;
    let settings: Vec<Setting> = client
        .query(
            "SELECT name, value FROM system.settings
             WHERE name IN ('max_memory_usage', 'max_bytes_before_external_group_by', 'max_threads')",
        )
        .fetch_all::<Setting>()
        .await?;
    let warehouse = warehouse(&dataset.database)?;
    let window = dataset.window();
    let prefix = format!("exposures-bench-large-{}-", Utc::now().timestamp_millis());
    let runs = 3;
    let mut payload = None;
    let mut mismatches = Vec::new();
    let mut ids = Vec::new();
    for round in 0..=runs {
        let query_id = format!("{prefix}project-{round}");
        let started = Instant::now();
        let rows = warehouse
            .exposures_query(TimestampKind::DateTime, target(), &window)
            .with_setting("query_id", &query_id)
            .with_setting("log_queries", "1")
            .fetch_all::<BucketRow>()
            .await?;
        log(format!(
            "large: project run {round}{}: {:.1} s",
            if round == 0 { " (warm-up)" } else { "" },
            started.elapsed().as_secs_f64()
        ));
        let outcome = Outcome::Buckets(payload_of(&window, rows)?);
        if let Some(m) = check("project", &outcome, &dataset, None) {
            mismatches.push(m);
        }
        if let Outcome::Buckets(p) = outcome {
            payload.get_or_insert(p);
        }
        if round > 0 {
            ids.push(query_id);
        }
    }
    // The same query without spilling, under the same cap: what the settings buy.
    let no_spill_id = format!("{prefix}project-no-spill");
    let no_spill = warehouse
        .exposures_query(TimestampKind::DateTime, target(), &window)
        .with_setting("query_id", &no_spill_id)
        .with_setting("log_queries", "1")
        .with_setting("max_bytes_before_external_group_by", "0")
        .fetch_all::<BucketRow>()
        .await;
    // The straightforward formulation under the function's settings, once.
    let baseline_id = format!("{prefix}baseline-0");
    let scoped = exposures::warehouse::MEMORY_SETTINGS
        .iter()
        .fold(admin().with_database(&dataset.database), |c, (k, v)| {
            c.with_setting(*k, *v)
        });
    let baseline = execute_server(
        "baseline",
        &warehouse,
        &scoped,
        &[&BASELINE],
        &window,
        &baseline_id,
    )
    .await;

    let logged = flush_and_read_log(&client, &prefix).await?;
    let project: Vec<Run> = logged
        .iter()
        .filter(|r| ids.contains(&r.query_id))
        .map(run_of)
        .collect();
    let s = stats(&project);
    let peak_max = project.iter().map(|r| r.memory).fold(0.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ClickHouse {version} (server): {}.",
        dataset.describe()
    );
    let _ = writeln!(
        out,
        "Function client settings (Warehouse::new): {}",
        exposures::warehouse::MEMORY_SETTINGS
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "Server defaults: {}",
        settings
            .iter()
            .map(|s| format!("{}={}", s.name, s.value))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| query | runs | time s | CPU s | peak memory MiB | spilled parts | outcome |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let _ = writeln!(
        out,
        "| project (function settings) | {} | {:.1} | {:.1} | {:.0} (max {:.0}) | {:.0} | {} |",
        s.runs,
        s.duration_ms / 1000.0,
        s.cpu_ms / 1000.0,
        mib(s.memory),
        mib(peak_max),
        s.spilled_parts,
        if mismatches.is_empty() {
            "exact"
        } else {
            "MISMATCH"
        }
    );
    let row = |name: &str, id: &str, result: Result<String, String>| {
        let logged_run = logged.iter().find(|r| r.query_id == id).map(run_of);
        match (logged_run, result) {
            (Some(r), Ok(what)) => format!(
                "| {name} | 1 | {:.1} | {:.1} | {:.0} | {:.0} | {what} |",
                r.duration_ms / 1000.0,
                r.cpu_ms / 1000.0,
                mib(r.memory),
                r.spilled_parts
            ),
            (_, Err(e)) => format!("| {name} | 1 | | | | | failed: {} |", e.replace('|', "/")),
            (None, Ok(what)) => format!("| {name} | 1 | | | | | {what} (not in query_log) |"),
        }
    };
    let no_spill_result = no_spill
        .map(|_| "finished".to_owned())
        .map_err(|e| e.to_string());
    let baseline_result = match baseline {
        Ok(outcome) => Ok(
            match check("baseline", &outcome, &dataset, payload.as_ref()) {
                None => "exact, same summary".to_owned(),
                Some(m) => m,
            },
        ),
        Err(e) => Err(e.to_string()),
    };
    let _ = writeln!(
        out,
        "{}",
        row(
            "project, spilling disabled (same cap)",
            &no_spill_id,
            no_spill_result
        )
    );
    let _ = writeln!(
        out,
        "{}",
        row(
            "baseline (function settings)",
            &baseline_id,
            baseline_result
        )
    );
    for m in &mismatches {
        let _ = writeln!(out, "RESULT MISMATCH: {m}");
    }
    println!("{out}");
    save("large", &out)?;
    Ok(if mismatches.is_empty() { 0 } else { 1 })
}
