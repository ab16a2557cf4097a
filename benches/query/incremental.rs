//! `--incremental` (issue 11): the function's refresh of a running experiment on
//! the benchmark data, full against incremental, on the server through the whole
//! refresh (ClickHouse time and peak memory summed over the function's queries
//! from `system.query_log`), and on chDB for the same queries.
//!
//! The experiment starts at the dataset's start; its first refresh is at `A`
//! (16 days in, after every generated row). Two changes are loaded after the
//! dataset, once: 15 minutes of new events in `[A, A + 15 min)` (150,000 rows
//! from 15,000 identities: 60 % returning, 40 % new, a few switching variant) and
//! one day at the dataset's average rate in `[A + 15 min, A + 1 day + 15 min)`
//! (1,430,000 rows from 143,000 identities, same mix). Each round: the first
//! refresh at `A` (full), the steady-state refresh at `A + 15 min` (incremental,
//! checked equal to a full computation), the refresh one day later (the rule
//! chooses), the incremental plan forced on that day, and the scan floor.

use super::*;

use exposures::service::Mode;
use exposures::App;

/// `A`: 16 days after the dataset's start, in partitions of their own.
pub(super) const FIRST_REFRESH: i64 = START + 16 * 86_400;
pub(super) const QUARTER: i64 = 900;
const DAY: i64 = 86_400;
const DATABASE: &str = "exposures_bench_incremental";
/// Required of the steady-state refresh against the full one (issue 15): time and peak memory.
const MAX_TIME: f64 = 1.0 / 4.0;
const MAX_MEMORY: f64 = 1.0 / 8.0;

/// What every one-read incremental plan does before any grouping: read the
/// window, hash every row for the fingerprint, test every identity against the
/// set of identities seen since `A` (the shipped query's hashes).
const FINGERPRINT_FLOOR: &str = "\
SELECT toUInt64(count()) AS rows,
       toUInt64(sum(cityHash64(identifier, value, toUInt64(toUInt32(timestamp))))) AS checksum,
       toUInt64(countIf(cityHash64(identifier) IN (SELECT cityHash64(identifier) FROM ? WHERE {filter}))) AS hits
FROM ? WHERE {filter}";

/// The same, grouped by (changed identity, since `A`) as the shipped query is,
/// with only the fingerprint's two aggregates: the least any one-read plan that
/// keeps a state per changed identity costs, before the state itself.
const GROUPING_FLOOR: &str = "\
SELECT toUInt64(count()) AS rows, toUInt64(sum(checksum)) AS checksum, toUInt64(sum(n)) AS hits
FROM
(
    SELECT key, late, count() AS n, sum(row_hash) AS checksum
    FROM
    (
        SELECT if(cityHash64(identifier) IN (SELECT cityHash64(identifier) FROM ? WHERE {filter}),
                  cityHash64(identifier), toUInt64(0)) AS key,
               timestamp >= toDateTime(?) AS late,
               cityHash64(identifier, value, toUInt64(toUInt32(timestamp))) AS row_hash
        FROM ? WHERE {filter}
    )
    GROUP BY key, late
)";

#[derive(clickhouse::Row, serde::Deserialize)]
#[allow(dead_code)] // read only to make the server compute them
struct FloorRow {
    rows: u64,
    checksum: u64,
    hits: u64,
}

/// Runs one of the floors above over the window up to the steady state, the set since `A`.
async fn floor_query(client: &clickhouse::Client, sql: &str, grouped: bool) -> Res<u64> {
    // The incremental data's timestamp is a `DateTime` (the 18.16 layout).
    let filter = FILTER
        .replace("{lower}", "toDateTime(?)")
        .replace("{upper}", "toDateTime(?)");
    let sql = sql.replace("{filter}", &filter);
    let read = |q: clickhouse::query::Query, from: i64, to: i64| {
        q.bind(clickhouse::sql::Identifier(TABLE))
            .bind(ENVIRONMENT)
            .bind(EXPOSURE_EVENT)
            .bind(FEATURE)
            .bind(from)
            .bind(to)
    };
    let steady = FIRST_REFRESH + QUARTER;
    let mut q = read(client.query(&sql), FIRST_REFRESH, steady);
    if grouped {
        q = q.bind(FIRST_REFRESH);
    }
    let q = read(q, START, steady).with_setting("log_queries", "1");
    Ok(q.fetch_one::<FloorRow>().await?.rows)
}

/// New events after the dataset: `rows` rows from `identities` identities in `[from, from + seconds)`.
pub(super) fn change_sql(
    table: &str,
    timestamp: &str,
    offset: u64,
    rows: u64,
    identities: u64,
    from: i64,
    seconds: i64,
) -> String {
    format!(
        "INSERT INTO {table}
SELECT 'production', '$flag_exposure', 'checkout-redesign', identifier, value, {timestamp} AS timestamp
FROM (
  SELECT number AS n, intHash64(n + {offset} + 777) AS h, h % {identities} AS k,
    if(k * 10 < {identities} * 6, intHash64(k + {offset}) % 2000000, 2000000 + {offset} + k) AS id,
    lower(hex(intHash64(id))) AS h1, lower(hex(intHash64(id + 1000000000000))) AS h2,
    concat(substring(h1, 1, 8), '-', substring(h1, 9, 4), '-', substring(h1, 13, 4), '-',
           substring(h2, 1, 4), '-', substring(h2, 5, 12)) AS identifier,
    ['control', 'variant_a', 'variant_b'][((intHash32(id) % 3)
        + if(k % 500 = 1 AND id < 2000000 AND n % 2 = 0, 1, 0)) % 3 + 1] AS value,
    toUInt64({from}) + (intHash64(n + 99) % {seconds}) AS ts
  FROM numbers({rows})
)"
    )
}

fn changes(table: &str, timestamp: &str) -> [String; 2] {
    [
        change_sql(table, timestamp, 0, 150_000, 15_000, FIRST_REFRESH, QUARTER),
        change_sql(
            table,
            timestamp,
            1_000_000,
            1_430_000,
            143_000,
            FIRST_REFRESH + QUARTER,
            DAY,
        ),
    ]
}

fn at(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t, 0).expect("valid time")
}

fn window_to(end: i64) -> Window {
    Window::new(at(START), None, at(end))
}

/// What one measured step cost on the server.
#[derive(Default)]
struct Measured {
    runs: Vec<Run>,
    queries: Vec<f64>,
    modes: Vec<String>,
}

async fn ensure_incremental_data(client: &clickhouse::Client, dataset: &Dataset) -> Res<u64> {
    let table = format!("{DATABASE}.{TABLE}");
    let [quarter, day] = changes(&table, "toDateTime(ts)");
    let inserts = [dataset.generate_sql(&table, "toDateTime(ts)"), quarter, day];
    let total = dataset.total_rows() + 150_000 + 1_430_000;
    let describe = format!("{} + two changes", dataset.describe());
    load_once(
        client,
        DATABASE,
        ddl(DDL_OLD, &table),
        &inserts,
        total,
        &describe,
    )
    .await?;
    Ok(total)
}

/// The function's app on the benchmark databases, its clock at `now`.
fn app(postgres: &str, now: DateTime<Utc>) -> Res<App> {
    let url = server_url();
    let config = Config::from_lookup(|name| match name {
        "CLICKHOUSE_URL" => Some(url.clone()),
        "CLICKHOUSE_DATABASE" => Some(DATABASE.to_owned()),
        "EXPOSURES_EVENTS_TABLE" => Some(TABLE.to_owned()),
        "DATABASE_URL" => Some(postgres.to_owned()),
        _ => None,
    })?;
    Ok(App::new(config)?.with_clock(std::sync::Arc::new(move || now)))
}

/// Sum of time, max of memory of the function's queries that started in `[from, to]` (whole seconds).
async fn function_cost(
    client: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Res<(Run, usize)> {
    client.query("SYSTEM FLUSH LOGS").execute().await?;
    let rows = client
        .query(&QUERY_LOG_SQL.replace(
            "{where}",
            // 18.16 logs no database: nothing else runs on the server meanwhile.
            "is_initial_query = 1 AND query_start_time >= toDateTime(?) \
             AND query_start_time <= toDateTime(?) \
             AND query NOT LIKE '%query_log%' AND query NOT LIKE 'SYSTEM %'",
        ))
        .bind(from.timestamp())
        .bind(to.timestamp() + 1)
        .fetch_all::<LogRow>()
        .await?;
    let mut run = Run::default();
    for r in &rows {
        let one = run_of(r);
        run.duration_ms += one.duration_ms;
        run.cpu_ms += one.cpu_ms;
        run.read_rows += one.read_rows;
        run.memory = run.memory.max(one.memory);
    }
    Ok((run, rows.len()))
}

/// Runs `f` alone on the server (a second apart from anything else) and reads its cost.
async fn measured<F, T>(client: &clickhouse::Client, f: F) -> Res<(T, Run, usize)>
where
    F: std::future::Future<Output = Res<T>>,
{
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let from = Utc::now();
    let out = f.await?;
    let to = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (run, n) = function_cost(client, from, to).await?;
    Ok((out, run, n))
}

async fn refresh_at(postgres: &str, id: i64, now: i64) -> Res<(Value, String)> {
    let app = app(postgres, at(now))?;
    let (experiment, stored) = app.load(id).await?;
    let (_, view, mode) = app.refresh_with_mode(&experiment, stored, None).await?;
    let mode = match mode {
        Some(Mode::Incremental) => "incremental".to_owned(),
        Some(Mode::Full(reason)) => format!("full ({})", reason.as_str()),
        None => "none".to_owned(),
    };
    let payload = view
        .exposures
        .and_then(|e| e.payload)
        .ok_or("refresh stored no payload")?;
    Ok((payload, mode))
}

async fn postgres_database() -> Res<(String, tokio_postgres::Client)> {
    let base = std::env::var("EXPOSURES_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432".into());
    let (admin, conn) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    let url = format!("{base}/{DATABASE}");
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok((url, pg))
}

pub(super) async fn run(args: &Args) -> Res<i32> {
    let dataset = Dataset::standard();
    let client = admin();
    let version: String = client.query("SELECT version()").fetch_one().await?;
    let total = ensure_incremental_data(&client, &dataset).await?;
    let (postgres, pg) = postgres_database().await?;
    app(&postgres, at(FIRST_REFRESH))?.store.migrate().await?;
    let id: i64 = pg
        .query_one(
            "INSERT INTO experiments (environment_key, feature_name, status, started_at)
             VALUES ($1, $2, 'running', $3) RETURNING id",
            &[&ENVIRONMENT, &FEATURE, &at(START)],
        )
        .await?
        .get(0);
    let warehouse = warehouse(DATABASE)?;
    let scoped = client.clone().with_database(DATABASE);
    let steady = FIRST_REFRESH + QUARTER;
    let later = steady + DAY;
    let names = [
        "first (full)",
        "steady (+15 min)",
        "one day later",
        "incremental plan forced, one day",
        "scan floor",
        "scan + row hash + IN test",
        "the same grouped by (key, late), no state",
    ];
    let mut steps: Vec<Measured> = names.iter().map(|_| Measured::default()).collect();
    let mut mismatches = Vec::new();
    for round in 0..=args.runs {
        pg.execute(
            "DELETE FROM experiment_exposures WHERE experiment_id = $1",
            &[&id],
        )
        .await?;
        let (first, cost, n) = measured(&client, refresh_at(&postgres, id, FIRST_REFRESH)).await?;
        let results = vec![(first.1, cost, n)];
        let ((payload, mode), cost, n) =
            measured(&client, refresh_at(&postgres, id, steady)).await?;
        let mut results = results;
        results.push((mode, cost, n));
        // Exact: the stored payload is what a full computation gives (untimed).
        let full = warehouse.exposures(target(), &window_to(steady)).await?;
        if serde_json::to_value(Payload::build(window_to(steady).granularity, full.counts))?
            != payload
        {
            mismatches.push(format!(
                "round {round}: steady-state payload differs from the full computation"
            ));
        }
        let ((_, mode), cost, n) = measured(&client, refresh_at(&postgres, id, later)).await?;
        results.push((mode, cost, n));
        let forced = async {
            let query = warehouse.incremental_query(
                TimestampKind::DateTime,
                target(),
                &window_to(later),
                at(steady),
            );
            Ok(query
                .fetch_all::<exposures::warehouse::TransitionRow>()
                .await?
                .len())
        };
        let (_, cost, n) = measured(&client, forced).await?;
        results.push(("incremental query only".to_owned(), cost, n));
        let floor = async {
            Ok(FLOOR
                .query(&scoped, Engine::Server, &window_to(steady))
                .with_setting("log_queries", "1")
                .fetch_one::<ScanRow>()
                .await?
                .rows)
        };
        let (_, cost, n) = measured(&client, floor).await?;
        results.push(("scan".to_owned(), cost, n));
        let (_, cost, n) =
            measured(&client, floor_query(&scoped, FINGERPRINT_FLOOR, false)).await?;
        results.push(("floor".to_owned(), cost, n));
        let (_, cost, n) = measured(&client, floor_query(&scoped, GROUPING_FLOOR, true)).await?;
        results.push(("floor".to_owned(), cost, n));
        if round == 0 {
            log("server: warm-up round done");
            continue;
        }
        for (step, (mode, cost, n)) in steps.iter_mut().zip(results) {
            step.runs.push(cost);
            step.queries.push(n as f64);
            step.modes.push(mode);
        }
        log(format!("server: round {round}/{} done", args.runs));
    }

    let mut chdb_rows = Vec::new();
    if args.chdb {
        chdb_rows = chdb_incremental(args, &dataset, total).await?;
    }

    let stat: Vec<Stats> = steps.iter().map(|s| stats(&s.runs)).collect();
    let mut out = String::new();
    let _ = writeln!(out, "Dataset: {} (as `exposures_bench`), then 150,000 rows in the 15 minutes after the first refresh and 1,430,000 in the following day.", dataset.describe());
    let _ = writeln!(
        out,
        "Experiment started {}; first refresh at {}; median of {} rounds after a warm-up.",
        at(START).format("%Y-%m-%dT%H:%M:%SZ"),
        at(FIRST_REFRESH).format("%Y-%m-%dT%H:%M:%SZ"),
        args.runs
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| engine | refresh | mode chosen | queries | ClickHouse time ms | CPU ms | peak memory MiB | time / full | memory / full |");
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    let label = format!("ClickHouse {version} (server)");
    for (k, name) in names.iter().enumerate() {
        let s = &stat[k];
        let _ = writeln!(
            out,
            "| {label} | {name} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} |",
            steps[k].modes.first().map_or("", String::as_str),
            median(steps[k].queries.clone()),
            s.duration_ms,
            s.cpu_ms,
            mib(s.memory),
            s.duration_ms / stat[0].duration_ms,
            s.memory / stat[0].memory,
        );
    }
    for row in &chdb_rows {
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out);
    let time = stat[1].duration_ms / stat[0].duration_ms;
    let memory = stat[1].memory / stat[0].memory;
    let floor = stat[1].duration_ms / stat[4].duration_ms;
    let modes_ok = steps[1].modes.iter().all(|m| m == "incremental")
        && steps[2].modes.iter().all(|m| m.starts_with("full"));
    let exact = mismatches.is_empty();
    let _ = writeln!(out, "{label}:");
    let _ = writeln!(
        out,
        "  steady-state time / full   = {time:.2} (required <= 0.25): {}",
        verdict(time <= MAX_TIME)
    );
    let _ = writeln!(
        out,
        "  steady-state memory / full = {memory:.2} (required <= 0.125): {}",
        verdict(memory <= MAX_MEMORY)
    );
    let _ = writeln!(
        out,
        "  steady-state time / floor  = {floor:.2} (stretch <= 2): {}",
        verdict(floor <= 2.0)
    );
    let _ = writeln!(
        out,
        "  floor of any one-read plan / full: no grouping {:.2}, grouped with no state {:.2} \
         (the steady state's one query cannot go below these)",
        stat[5].duration_ms / stat[0].duration_ms,
        stat[6].duration_ms / stat[0].duration_ms
    );
    let _ = writeln!(
        out,
        "  forced incremental plan on one day / full = {:.2} (why the rule chooses full there)",
        stat[3].duration_ms / stat[0].duration_ms
    );
    let _ = writeln!(
        out,
        "  modes: steady state incremental, one day later full: {}",
        verdict(modes_ok)
    );
    if exact {
        let _ = writeln!(
            out,
            "  exact: every steady-state payload equals the full computation"
        );
    }
    for m in &mismatches {
        let _ = writeln!(out, "  RESULT MISMATCH: {m}");
    }
    print!("{out}");
    save("incremental", &out)?;
    Ok(
        if exact && modes_ok && time <= MAX_TIME && memory <= MAX_MEMORY {
            0
        } else {
            1
        },
    )
}

/// The same refreshes' queries on chDB (the function cannot run there): the full
/// query at each refresh time, and the delta count plus incremental query at the
/// steady state and one day later. Returns the table rows.
async fn chdb_incremental(args: &Args, dataset: &Dataset, total: u64) -> Res<Vec<String>> {
    let warehouse = warehouse(DATABASE)?;
    let client = clickhouse::Client::default();
    let table = format!("{DATABASE}.{TABLE}");
    let timestamp = "fromUnixTimestamp64Milli(toInt64(ts * 1000 + h % 1000), 'UTC')";
    let generate = dataset.generate_sql(&table, timestamp);
    let create = ddl(DDL_REFERENCE, &table);
    let more = changes(&table, timestamp);
    let kind = TimestampKind::DateTime64;
    let steady = FIRST_REFRESH + QUARTER;
    let later = steady + DAY;
    let settings: serde_json::Map<String, Value> = exposures::warehouse::MEMORY_SETTINGS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let sql = |q: clickhouse::query::Query| q.sql_display().to_string();
    let queries = [
        (
            "full-first",
            sql(warehouse.exposures_query(kind, target(), &window_to(FIRST_REFRESH))),
        ),
        (
            "full-steady",
            sql(warehouse.exposures_query(kind, target(), &window_to(steady))),
        ),
        (
            "delta-steady",
            sql(warehouse.delta_rows_query(kind, target(), &window_to(steady), at(FIRST_REFRESH))),
        ),
        (
            "incremental-steady",
            sql(warehouse.incremental_query(kind, target(), &window_to(steady), at(FIRST_REFRESH))),
        ),
        (
            "full-day",
            sql(warehouse.exposures_query(kind, target(), &window_to(later))),
        ),
        (
            "incremental-day",
            sql(warehouse.incremental_query(kind, target(), &window_to(later), at(steady))),
        ),
        (
            "floor",
            sql(FLOOR.query(&client, Engine::Chdb, &window_to(steady))),
        ),
    ];
    let plan = json!({
        "path": repo().join("target/bench/chdb").to_string_lossy(),
        "database": DATABASE,
        "ddl": create,
        "generate": generate,
        "more": more,
        "fingerprint": fingerprint(&[&generate, &create, &more[0], &more[1]]),
        "total_rows": total,
        "runs": args.runs,
        "session_timezone": "Asia/Kolkata",
        "queries": queries.iter().map(|(name, sql)| json!({"name": name, "sql": sql, "settings": settings})).collect::<Vec<_>>(),
    });
    let answer = run_bench_chdb(&plan)?;
    let stat = |name: &str| -> Stats {
        let runs: Vec<Run> = answer["queries"][name]["runs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| Run {
                        duration_ms: r["duration_ms"].as_f64().unwrap_or(f64::NAN),
                        memory: r["memory"].as_f64().unwrap_or(f64::NAN),
                        read_rows: r["read_rows"].as_f64().unwrap_or(f64::NAN),
                        cpu_ms: r["cpu_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
                        spilled_parts: 0.0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        stats(&runs)
    };
    // Exact on chDB too: the stored full payload at A plus the steady-state change equals the full one.
    let rows = |name: &str| answer["queries"][name]["rows"].clone();
    let first: Vec<BucketRow> = serde_json::from_value(rows("full-first"))?;
    let first_print = exposures::warehouse::fingerprint(&first);
    let stored = payload_of(&window_to(FIRST_REFRESH), first)?;
    let full: Vec<BucketRow> = serde_json::from_value(rows("full-steady"))?;
    let expected = payload_of(&window_to(steady), full)?;
    let delta = exposures::warehouse::delta(serde_json::from_value(rows("incremental-steady"))?);
    let exact = delta.before == first_print
        && stored
            .apply(window_to(steady).granularity, &delta.transitions)
            .ok()
            .as_ref()
            == Some(&expected);
    let label = format!(
        "ClickHouse {} (chDB)",
        answer["version"].as_str().unwrap_or("?")
    );
    let full_first = stat("full-first");
    let sum = |names: &[&str]| -> Stats {
        let parts: Vec<Stats> = names.iter().map(|n| stat(n)).collect();
        Stats {
            runs: parts[0].runs,
            duration_ms: parts.iter().map(|s| s.duration_ms).sum(),
            cpu_ms: parts.iter().map(|s| s.cpu_ms).sum(),
            memory: parts.iter().map(|s| s.memory).fold(0.0, f64::max),
            read_rows: parts.iter().map(|s| s.read_rows).sum(),
            spilled_parts: 0.0,
        }
    };
    let lines = [
        ("first (full)", "full", sum(&["full-first"]), 1),
        (
            "steady (+15 min)",
            if exact {
                "incremental (exact)"
            } else {
                "incremental (MISMATCH)"
            },
            sum(&["delta-steady", "incremental-steady"]),
            2,
        ),
        ("one day later", "full", sum(&["full-day"]), 1),
        (
            "incremental plan forced, one day",
            "incremental query only",
            sum(&["incremental-day"]),
            1,
        ),
        ("scan floor", "scan", sum(&["floor"]), 1),
    ];
    Ok(lines
        .iter()
        .map(|(name, mode, s, queries)| {
            format!(
                "| {label} | {name} | {mode} | {queries} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} |",
                s.duration_ms,
                s.cpu_ms,
                mib(s.memory),
                s.duration_ms / full_first.duration_ms,
                s.memory / full_first.memory
            )
        })
        .collect())
}
