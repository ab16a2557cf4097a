//! Handler cost outside the query (issue 5, item 5): `scripts/bench.sh --handler`.
//!
//! For each release-profile variant (built with `--config` overrides into its own
//! target directory under `target/bench/handler/`), the function binary is run
//! under a minimal Lambda Runtime API written here (the protocol Lambda itself
//! speaks), against the local ClickHouse 18.16 and PostgreSQL:
//!
//! - cold start: process start to the runtime's first `GET .../invocation/next`
//!   (what Lambda reports as Init Duration, without the platform's own share),
//!   and the first invocation after it;
//! - warm invocations of a refresh (`{"experiment_id": 1}`), minus the
//!   ClickHouse time of their queries from `system.query_log`;
//! - peak RSS (`VmHWM` of the function process after every invocation);
//! - binary size.
//!
//! Then, end to end through `cargo lambda watch --release` and
//! `cargo lambda invoke`, warm invocations minus ClickHouse time; and the size of
//! the deployable `cargo lambda build --release --arm64` artifact, with the panic
//! strategy cargo-lambda compiled it with.
//!
//! Arguments (after `cargo bench --bench handler --`): `--invokes N` (default 20),
//! `--cold-starts N` (default 5), `--variants a,b` (default all), `--no-cargo-lambda`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const GENERATE_SQL: &str = include_str!("generate.sql");
const DDL_OLD: &str = include_str!("../migrations/clickhouse/events_clickhouse_18.sql");
const CH_DATABASE: &str = "exposures_bench_handler";
const PG_DATABASE: &str = "exposures_bench";
/// The generator's flag; the function's queries are found in the log by it (nothing else runs meanwhile).
const FEATURE: &str = "checkout-redesign";
const EVENT: &str = r#"{"experiment_id": 1}"#;

/// Release-profile variants: name and `cargo --config` overrides.
const VARIANTS: [(&str, &[&str]); 4] = [
    ("release", &[]),
    ("panic-abort", &["profile.release.panic=\"abort\""]),
    ("opt-level-s", &["profile.release.opt-level=\"s\""]),
    (
        "thin-lto-cu16",
        &[
            "profile.release.lto=\"thin\"",
            "profile.release.codegen-units=16",
        ],
    ),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench-handler] {}", msg.as_ref());
}

fn clickhouse_url() -> String {
    std::env::var("EXPOSURES_BENCH_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

fn postgres_base() -> String {
    std::env::var("EXPOSURES_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432".into())
}

struct Args {
    invokes: usize,
    cold_starts: usize,
    variants: Vec<String>,
    cargo_lambda: bool,
}

fn parse_args() -> Res<Option<Args>> {
    let mut args = Args {
        invokes: 20,
        cold_starts: 5,
        variants: VARIANTS.iter().map(|(n, _)| (*n).to_owned()).collect(),
        cargo_lambda: true,
    };
    let mut bench = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => bench = true,
            "--invokes" => args.invokes = it.next().ok_or("--invokes N")?.parse()?,
            "--cold-starts" => args.cold_starts = it.next().ok_or("--cold-starts N")?.parse()?,
            "--variants" => {
                args.variants = it
                    .next()
                    .ok_or("--variants a,b")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--no-cargo-lambda" => args.cargo_lambda = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(bench.then_some(args))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("benches/handler.rs: run it with `scripts/bench.sh --handler`");
            return;
        }
        Err(e) => {
            eprintln!("benches/handler.rs: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(&args)) {
        eprintln!("benches/handler.rs: error: {e}");
        std::process::exit(2);
    }
}

// ---------------------------------------------------------------------------
// Data: a small experiment (the cost measured here is the handler's, not the query's).

async fn prepare() -> Res<BTreeMap<String, String>> {
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_validation(false);
    let table = format!("{CH_DATABASE}.events");
    let generate: String = GENERATE_SQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{table}", &table)
        .replace("{timestamp}", "toDateTime(ts)")
        .replace("{events}", "100000")
        .replace("{identities}", "10000")
        .replace("{quarantined}", "100")
        .replace("{start}", "1780272000")
        .replace("{seconds}", &(14 * 86_400).to_string())
        .replace("{total}", "105000");
    let ddl: String = DDL_OLD
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "CREATE TABLE IF NOT EXISTS events",
            &format!("CREATE TABLE {table}"),
        );
    for sql in [
        format!("CREATE DATABASE IF NOT EXISTS {CH_DATABASE}"),
        format!("DROP TABLE IF EXISTS {table}"),
        ddl,
        generate,
    ] {
        client.query(&sql).execute().await?;
    }

    let (admin, conn) = tokio_postgres::connect(
        &format!("{}/postgres", postgres_base()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"
        ))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {PG_DATABASE}"))
        .await?;
    let database_url = format!("{}/{PG_DATABASE}", postgres_base());

    let env = BTreeMap::from([
        ("CLICKHOUSE_URL".to_owned(), clickhouse_url()),
        ("CLICKHOUSE_DATABASE".to_owned(), CH_DATABASE.to_owned()),
        ("DATABASE_URL".to_owned(), database_url.clone()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let config = exposures::Config::from_lookup(|k| env.get(k).cloned())?;
    let app = exposures::App::new(config)?;
    app.store.migrate().await?;
    let (pg, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // Running since the window's start: every refresh queries ClickHouse (day buckets).
    pg.batch_execute(&format!(
        "INSERT INTO experiments (id, environment_key, feature_name, status, started_at)
         VALUES (1, 'production', '{FEATURE}', 'running', '2026-06-01T00:00:00Z')"
    ))
    .await?;
    log(format!(
        "data: {CH_DATABASE}.events (100,000 exposures, 10,000 identities), PostgreSQL database {PG_DATABASE}"
    ));
    Ok(env)
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Logged {
    duration_ms: u64,
}

/// ClickHouse time of the function's queries started at or after `since` (Unix seconds).
async fn clickhouse_times(since: i64) -> Res<Vec<f64>> {
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_validation(false);
    client.query("SYSTEM FLUSH LOGS").execute().await?;
    let rows = client
        .query(
            "SELECT toUInt64(query_duration_ms) AS duration_ms FROM system.query_log
             WHERE type = 2 AND event_time >= toDateTime(?) AND position(query, 'GROUP BY quarantined') > 0
               AND position(query, ?) > 0
             ORDER BY event_time",
        )
        .bind(since)
        .bind(FEATURE)
        .fetch_all::<Logged>()
        .await?;
    Ok(rows.iter().map(|r| r.duration_ms as f64).collect())
}

// ---------------------------------------------------------------------------
// A Lambda Runtime API: hands out queued events on `GET .../invocation/next` and
// reports `POST .../response` and `.../error`.

enum Report {
    Polled(Instant),
    Done { ok: bool, at: Instant, body: String },
}

#[derive(Default)]
struct Queue {
    events: Mutex<VecDeque<(String, String)>>,
    ready: Condvar,
}

struct RuntimeApi {
    port: u16,
    queue: Arc<Queue>,
    reports: Receiver<Report>,
}

impl RuntimeApi {
    fn start() -> Res<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let queue = Arc::new(Queue::default());
        let (tx, rx) = channel();
        let q = Arc::clone(&queue);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (q, tx) = (Arc::clone(&q), tx.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &q, &tx);
                });
            }
        });
        Ok(Self {
            port,
            queue,
            reports: rx,
        })
    }

    fn push(&self, id: &str, body: &str) {
        self.queue
            .events
            .lock()
            .unwrap()
            .push_back((id.to_owned(), body.to_owned()));
        self.queue.ready.notify_all();
    }

    fn wait(&self, timeout: Duration) -> Res<Report> {
        Ok(self.reports.recv_timeout(timeout)?)
    }
}

fn serve(stream: TcpStream, queue: &Queue, reports: &Sender<Report>) -> std::io::Result<()> {
    // Each answer goes out as one segment, right away (no Nagle wait on our side).
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if method == "GET" && path.ends_with("/invocation/next") {
            let _ = reports.send(Report::Polled(Instant::now()));
            let (id, event) = {
                let mut events = queue.events.lock().unwrap();
                loop {
                    if let Some(e) = events.pop_front() {
                        break e;
                    }
                    events = queue.ready.wait(events).unwrap();
                }
            };
            let deadline = Utc::now().timestamp_millis() + 300_000;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:eu-west-1:123456789012:function:exposures\r\n\
                 Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n\
                 Content-Length: {}\r\n\r\n{event}",
                event.len()
            );
            writer.write_all(answer.as_bytes())?;
        } else {
            let ok = path.ends_with("/response");
            if path.contains("/invocation/") {
                let _ = reports.send(Report::Done {
                    ok,
                    at: Instant::now(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            } else {
                // init/error
                let _ = reports.send(Report::Done {
                    ok: false,
                    at: Instant::now(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            writer.write_all(
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )?;
        }
        writer.flush()?;
    }
}

// ---------------------------------------------------------------------------

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Function {
    child: Child,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_function(
    binary: &Path,
    api: &RuntimeApi,
    env: &BTreeMap<String, String>,
) -> Res<(Function, Instant)> {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", "exposures")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/exposures")
        .env("AWS_REGION", "eu-west-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let child = command.spawn()?;
    Ok((Function { child }, started))
}

/// One invocation: queue the event, wait for the function's answer.
fn invoke(api: &RuntimeApi, id: &str) -> Res<f64> {
    let sent = Instant::now();
    api.push(id, EVENT);
    loop {
        match api.wait(Duration::from_secs(120))? {
            Report::Polled(_) => continue,
            Report::Done { ok: true, at, body } => {
                if !body.contains("\"refreshed\"") {
                    return Err(format!("unexpected answer: {body}").into());
                }
                return Ok(ms(at - sent));
            }
            Report::Done {
                ok: false, body, ..
            } => return Err(format!("invocation failed: {body}").into()),
        }
    }
}

fn wait_polled(api: &RuntimeApi) -> Res<Instant> {
    match api.wait(Duration::from_secs(60))? {
        Report::Polled(at) => Ok(at),
        Report::Done { body, .. } => Err(format!("init failed: {body}").into()),
    }
}

#[derive(Default)]
struct VariantResult {
    size: u64,
    init_ms: f64,
    first_invoke_ms: f64,
    warm_ms: f64,
    warm_clickhouse_ms: f64,
    peak_rss_kib: u64,
}

async fn measure(binary: &Path, env: &BTreeMap<String, String>, args: &Args) -> Res<VariantResult> {
    let mut inits = Vec::new();
    let mut firsts = Vec::new();
    for i in 0..args.cold_starts {
        // A fresh Runtime API per container: a stopped one leaves its poll pending.
        let api = RuntimeApi::start()?;
        let (function, started) = spawn_function(binary, &api, env)?;
        let polled = wait_polled(&api)?;
        inits.push(ms(polled - started));
        firsts.push(invoke(&api, &format!("cold-{i}"))?);
        // The next poll, then stop: one container per cold start.
        let _ = wait_polled(&api);
        drop(function);
    }
    let api = RuntimeApi::start()?;
    let (function, _) = spawn_function(binary, &api, env)?;
    wait_polled(&api)?;
    invoke(&api, "warm-up")?;
    let _ = wait_polled(&api);
    // Earlier queries end in an earlier second of `system.query_log.event_time`.
    std::thread::sleep(Duration::from_millis(1100));
    let since = Utc::now().timestamp();
    let mut warm = Vec::new();
    for i in 0..args.invokes {
        warm.push(invoke(&api, &format!("warm-{i}"))?);
        let _ = wait_polled(&api);
    }
    let peak = peak_rss_kib(function.child.id()).unwrap_or(0);
    drop(function);
    let clickhouse = clickhouse_times(since).await?;
    if clickhouse.len() != args.invokes {
        log(format!(
            "warning: {} function queries logged for {} warm invocations",
            clickhouse.len(),
            args.invokes
        ));
    }
    Ok(VariantResult {
        size: std::fs::metadata(binary)?.len(),
        init_ms: median(inits),
        first_invoke_ms: median(firsts),
        warm_ms: median(warm),
        warm_clickhouse_ms: median(clickhouse),
        peak_rss_kib: peak,
    })
}

fn build(name: &str, overrides: &[&str]) -> Res<PathBuf> {
    let target = repo().join("target/bench/handler").join(name);
    let mut command = Command::new("cargo");
    command
        .args([
            "build",
            "--quiet",
            "--release",
            "--bin",
            "exposures",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(repo());
    for o in overrides {
        command.args(["--config", o]);
    }
    log(format!("building variant {name} ({})", overrides.join(" ")));
    let started = Instant::now();
    if !command.status()?.success() {
        return Err(format!("cargo build of variant {name} failed").into());
    }
    log(format!(
        "built {name} in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(target.join("release/exposures"))
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct CargoLambdaResult {
    warm_ms: f64,
    warm_clickhouse_ms: f64,
    cli_ms: f64,
}

/// End to end through `cargo lambda watch --release` and `cargo lambda invoke`.
async fn through_cargo_lambda(
    env: &BTreeMap<String, String>,
    args: &Args,
) -> Res<CargoLambdaResult> {
    use std::os::unix::process::CommandExt;
    let port = free_port()?;
    let logs = repo().join("target/bench");
    std::fs::create_dir_all(&logs)?;
    let mut command = Command::new("cargo");
    command
        .args([
            "lambda",
            "watch",
            "--release",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", repo().join("target/bench/cargo-lambda"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join("handler-watch.log"))?)
        .stderr(std::fs::File::create(logs.join("handler-watch.err.log"))?)
        .process_group(0);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn()?;
    let pgid = child.id();
    struct Group(u32, Child);
    impl Drop for Group {
        fn drop(&mut self) {
            // The emulator runs the function as a child: stop the group this benchmark started.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.0)])
                .status();
            let _ = self.1.wait();
        }
    }
    let _group = Group(pgid, child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("cargo lambda watch did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let invoke = || -> Res<f64> {
        let started = Instant::now();
        let out = Command::new("cargo")
            .args([
                "lambda",
                "invoke",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
            ])
            .arg(port.to_string())
            .args(["--data-ascii", EVENT, "--output-format", "json"])
            .stdin(Stdio::null())
            .output()?;
        let elapsed = ms(started.elapsed());
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("\"refreshed\"") {
            return Err(format!(
                "cargo lambda invoke failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(elapsed)
    };
    log("cargo lambda watch: first invocation (builds and starts the function)");
    invoke()?;
    invoke()?;
    std::thread::sleep(Duration::from_millis(1100));
    let since = Utc::now().timestamp();
    let mut warm = Vec::new();
    for _ in 0..args.invokes {
        warm.push(invoke()?);
    }
    let clickhouse = clickhouse_times(since).await?;
    // The start of the `cargo lambda` CLI itself, part of every `cargo lambda invoke`.
    let mut cli = Vec::new();
    for _ in 0..args.invokes {
        let started = Instant::now();
        Command::new("cargo")
            .args(["lambda", "--version"])
            .stdout(Stdio::null())
            .status()?;
        cli.push(ms(started.elapsed()));
    }
    Ok(CargoLambdaResult {
        warm_ms: median(warm),
        warm_clickhouse_ms: median(clickhouse),
        cli_ms: median(cli),
    })
}

/// Size of the deployable arm64 artifact and the panic strategy cargo-lambda used.
fn arm64_artifact() -> Res<(u64, String)> {
    let target = repo().join("target/bench/lambda-arm64");
    log("cargo lambda build --release --arm64 (deployable artifact)");
    // Rebuild this crate (not its dependencies), so the verbose log shows the rustc flags it got.
    let fingerprints = target.join("aarch64-unknown-linux-gnu/release/.fingerprint");
    if let Ok(dir) = std::fs::read_dir(&fingerprints) {
        for entry in dir.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("exposures-")
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    // cargo-lambda 1.9 hands `--target-dir` to `cargo metadata`, which rejects it: use the variable.
    let out = Command::new("cargo")
        .args(["lambda", "build", "--release", "--arm64", "--verbose"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "cargo lambda build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_line = text
        .lines()
        .find(|l| l.contains("--crate-name exposures") && l.contains("--crate-type bin"))
        .unwrap_or_default();
    let panic = if crate_line.is_empty() {
        "unknown (no rustc command line in the log)".to_owned()
    } else if crate_line.contains("panic=abort") {
        "abort (cargo-lambda adds `profile.release.panic=\"abort\"` when Cargo.toml does not set `panic`)"
            .to_owned()
    } else {
        "unwind".to_owned()
    };
    let bootstrap = target.join("lambda/exposures/bootstrap");
    let bootstrap = if bootstrap.exists() {
        bootstrap
    } else {
        repo().join("target/lambda/exposures/bootstrap")
    };
    Ok((std::fs::metadata(&bootstrap)?.len(), panic))
}

async fn run(args: &Args) -> Res<()> {
    let env = prepare().await?;
    let mut results = Vec::new();
    for (name, overrides) in VARIANTS
        .iter()
        .filter(|(n, _)| args.variants.iter().any(|v| v == n))
    {
        let binary = build(name, overrides)?;
        log(format!("measuring {name}"));
        let r = measure(&binary, &env, args).await?;
        log(format!(
            "{name}: {} bytes, init {:.1} ms, first {:.1} ms, warm {:.1} ms (ClickHouse {:.1} ms), peak RSS {} KiB",
            r.size, r.init_ms, r.first_invoke_ms, r.warm_ms, r.warm_clickhouse_ms, r.peak_rss_kib
        ));
        results.push((*name, overrides.join(" "), r));
    }
    let cargo_lambda = if args.cargo_lambda {
        Some(through_cargo_lambda(&env, args).await?)
    } else {
        None
    };
    let arm64 = if args.cargo_lambda {
        Some(arm64_artifact()?)
    } else {
        None
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Handler cost outside the query: a refresh of a running experiment (100,000 exposures, 10,000 identities)\n\
         on the local ClickHouse 18.16 and PostgreSQL 15; medians of {} cold starts and {} warm invocations.\n",
        args.cold_starts, args.invokes
    );
    let _ = writeln!(
        out,
        "| release profile variant | binary (x86_64) | init (cold start) ms | first invocation ms | warm invocation ms | of which ClickHouse ms | warm overhead ms | peak RSS MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, overrides, r) in &results {
        let label = if overrides.is_empty() {
            format!("{name} (Cargo.toml as is)")
        } else {
            format!("{name} (`{overrides}`)")
        };
        let _ = writeln!(
            out,
            "| {label} | {:.2} MiB | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.size as f64 / 1_048_576.0,
            r.init_ms,
            r.first_invoke_ms,
            r.warm_ms,
            r.warm_clickhouse_ms,
            r.warm_ms - r.warm_clickhouse_ms,
            r.peak_rss_kib as f64 / 1024.0
        );
    }
    if let Some(c) = &cargo_lambda {
        let _ = writeln!(
            out,
            "\nThrough `cargo lambda watch --release` + `cargo lambda invoke`: warm invocation {:.1} ms end to end, \
             of which ClickHouse {:.1} ms and the start of the `cargo lambda` CLI {:.1} ms (`cargo lambda --version`); \
             the rest, {:.1} ms, is the emulator and the handler.",
            c.warm_ms,
            c.warm_clickhouse_ms,
            c.cli_ms,
            c.warm_ms - c.warm_clickhouse_ms - c.cli_ms
        );
    }
    if let Some((size, panic)) = &arm64 {
        let _ = writeln!(
            out,
            "Deployable `cargo lambda build --release --arm64` bootstrap: {:.2} MiB, panic strategy: {panic}.",
            *size as f64 / 1_048_576.0
        );
    }
    println!("{out}");
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("handler-latest.md"), &out)?;
    log("saved target/bench/handler-latest.md");
    Ok(())
}
