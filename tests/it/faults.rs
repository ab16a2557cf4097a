//! Faults mid-flight: a fault-injecting proxy in front of the real
//! ClickHouse server, a ClickHouse server SIGKILLed in the middle of a query,
//! and PostgreSQL restarted between invocations of one warm app. Each test
//! checks the outcome, the attempts made, and the stored row afterwards: the
//! new correct payload, or the previous one and its `as_of` with
//! `last_error_at` set. Never a partial or garbage payload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exposures::{handler, App};
use serde_json::{json, Value};

use crate::helpers::{
    clickhouse_url, clickhouse_victim_url, exposure, host_port, postgres_tls_base_url, servers,
    state_dir, ts, Ev, Logs, Options, TestEnv, CH_SECRET_PASSWORD, PG_SECRET_PASSWORD,
    TLS_POSTGRES,
};
use crate::proxy::{Fault, Proxy};

const START: &str = "2026-06-01T00:00:00Z";
/// The first, good refresh: 24 hours.
const BEFORE: &str = "2026-06-02T00:00:00Z";
/// The refresh under a fault: 48 hours.
const NOW: &str = "2026-06-03T00:00:00Z";

/// Two identities per hour for 48 hours (control, variant_a): an answer of
/// 96 rows, a few kilobytes, so that it can be cut in the middle.
fn events() -> Vec<Ev> {
    let start = ts(START);
    (0..48)
        .flat_map(|h| {
            let at = (start + chrono::TimeDelta::hours(h) + chrono::TimeDelta::minutes(7))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            [
                exposure(&format!("c{h}"), "control", &at),
                exposure(&format!("a{h}"), "variant_a", &at),
            ]
        })
        .collect()
}

/// The exact payload over the first `hours` hours of [`events`].
fn payload(hours: i64) -> Value {
    let start = ts(START);
    let points: Vec<Value> = (0..hours)
        .map(|h| {
            json!({"bucket": (start + chrono::TimeDelta::hours(h)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                   "new_identities": {"control": 1, "variant_a": 1}})
        })
        .collect();
    json!({"excluded_identities": 0, "timeseries": {"granularity": "hour", "points": points}})
}

/// What a faulted refresh did.
struct Run {
    env: TestEnv,
    id: i64,
    proxy: Proxy,
    app: App,
    answer: Result<Value, exposures::Error>,
    logs: String,
    elapsed: Duration,
}

impl Run {
    fn retries(&self) -> usize {
        self.logs.matches("retrying").count()
    }

    /// The `refresh failed` log line.
    fn failure_line(&self) -> &str {
        self.logs
            .lines()
            .find(|l| l.contains("refresh failed"))
            .unwrap_or_else(|| panic!("no `refresh failed` event in:\n{}", self.logs))
    }

    /// Asserts the stored row is the first refresh's, stamped as failed.
    async fn assert_previous_kept_and_stamped(&self) {
        let stored = self.env.stored(self.id).await;
        assert_eq!(stored["payload"], payload(24), "previous payload kept");
        assert_eq!(
            stored["as_of"],
            json!("2026-06-02T00:00:00+00:00"),
            "{stored}"
        );
        assert!(stored["last_error_at"].is_string(), "stamped: {stored}");
    }

    /// Asserts the answer and the stored row are the new, exact snapshot.
    async fn assert_refreshed(&self) {
        let answer = self
            .answer
            .as_ref()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs));
        assert_eq!(answer["outcome"], "refreshed");
        assert_eq!(answer["exposures"]["payload"], payload(48));
        let stored = self.env.stored(self.id).await;
        assert_eq!(stored["payload"], payload(48));
        assert_eq!(stored["last_error_at"], Value::Null);
    }
}

/// Settings that put the app's credentials on password-protected accounts:
/// ClickHouse user `exposures_secret`, PostgreSQL role `exposures_secret` on
/// the TLS server (sslmode `require`).
pub fn secret_options() -> Options {
    fn url(database: &str) -> String {
        let (_, port) = host_port(&postgres_tls_base_url());
        format!(
            "postgres://exposures_secret:{PG_SECRET_PASSWORD}@127.0.0.1:{port}/{database}?sslmode=require"
        )
    }
    Options {
        postgres_base_url: Some(postgres_tls_base_url()),
        database_url: Some(url),
        settings: vec![
            ("CLICKHOUSE_USER", "exposures_secret".into()),
            ("CLICKHOUSE_PASSWORD", CH_SECRET_PASSWORD.into()),
        ],
        ..Options::default()
    }
}

/// How the refresh under the fault computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// From the stored snapshot (the usual case for a running experiment).
    Incremental,
    /// In full: the stored snapshot's window fingerprint is forgotten first.
    Full,
}

/// Stores a good 24-hour snapshot directly, then refreshes 48 hours through a
/// proxy injecting `fault` `times` times, with `settings` and `deadline_in`.
async fn run_with(
    options: Options,
    fault: Fault,
    times: usize,
    settings: &[(&str, &str)],
    deadline_in: Option<Duration>,
) -> Run {
    run_on(
        Path::Incremental,
        options,
        fault,
        times,
        settings,
        deadline_in,
    )
    .await
}

async fn run_on(
    path: Path,
    options: Options,
    fault: Fault,
    times: usize,
    settings: &[(&str, &str)],
    deadline_in: Option<Duration>,
) -> Run {
    let env = TestEnv::with(options).await;
    let id = env.experiment(Some(START), None).await;
    env.insert(&events()).await;
    env.set_now(ts(BEFORE));
    let first = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(first["exposures"]["payload"], payload(24));
    if path == Path::Full {
        env.pg
            .execute(
                "UPDATE experiment_exposures SET window_rows = NULL WHERE experiment_id = $1",
                &[&id],
            )
            .await
            .unwrap();
    }

    let proxy = Proxy::start(&clickhouse_url()).await;
    proxy.inject(fault, times);
    let mut overrides = vec![("CLICKHOUSE_URL", proxy.url.as_str())];
    overrides.extend_from_slice(settings);
    let app = env.app_with_clock(&overrides, Arc::new(|| ts(NOW)));
    let deadline = deadline_in.map(|d| ts(NOW) + chrono::TimeDelta::from_std(d).unwrap());

    let (logs, guard) = Logs::capture();
    let began = Instant::now();
    let answer = handler::handle(&app, json!({"experiment_id": id}), deadline).await;
    let elapsed = began.elapsed();
    drop(guard);
    Run {
        env,
        id,
        proxy,
        app,
        answer,
        logs: logs.text(),
        elapsed,
    }
}

async fn run(fault: Fault, times: usize) -> Run {
    run_with(Options::default(), fault, times, &[], None).await
}

#[tokio::test]
async fn refused_first_connection_is_retried() {
    let r = run(Fault::Refuse, 1).await;
    r.assert_refreshed().await;
    assert_eq!(r.retries(), 1, "{}", r.logs);
    assert!(r.proxy.connections() >= 2);
    assert_eq!(
        r.proxy.queries(),
        1,
        "the refused connection never carried the query"
    );
}

#[tokio::test]
async fn reset_after_the_request_is_retried() {
    let r = run(Fault::ResetAfterRequest, 1).await;
    r.assert_refreshed().await;
    assert_eq!((r.proxy.queries(), r.retries()), (2, 1), "{}", r.logs);
}

/// The `mode` of the `refreshed` log event.
fn mode(logs: &str) -> &str {
    let line = logs
        .lines()
        .find(|l| l.contains(" refreshed"))
        .unwrap_or_else(|| panic!("no `refreshed` event in:\n{logs}"));
    if line.contains("mode=\"incremental\"") {
        "incremental"
    } else {
        "full"
    }
}

#[tokio::test]
async fn faults_in_the_incremental_and_the_full_query_are_retried() {
    let r = run(Fault::ResetAfterRequest, 1).await;
    r.assert_refreshed().await;
    assert_eq!(mode(&r.logs), "incremental", "{}", r.logs);
    assert_eq!((r.proxy.queries(), r.retries()), (2, 1), "{}", r.logs);

    let r = run_on(
        Path::Full,
        Options::default(),
        Fault::CutAnswer(1200),
        1,
        &[],
        None,
    )
    .await;
    r.assert_refreshed().await;
    assert_eq!(mode(&r.logs), "full", "{}", r.logs);
    assert_eq!((r.proxy.queries(), r.retries()), (2, 1), "{}", r.logs);
}

#[tokio::test]
async fn answer_cut_short_is_retried() {
    let r = run(Fault::CutAnswer(1200), 1).await;
    r.assert_refreshed().await;
    assert_eq!((r.proxy.queries(), r.retries()), (2, 1), "{}", r.logs);
}

#[tokio::test]
async fn proxy_503_is_retried() {
    let r = run(Fault::Status(503), 2).await;
    r.assert_refreshed().await;
    assert_eq!((r.proxy.queries(), r.retries()), (3, 2), "{}", r.logs);
}

#[tokio::test]
async fn answers_always_cut_short_fail_after_three_attempts() {
    let r = run(Fault::CutAnswer(1200), usize::MAX).await;
    let error = r.answer.as_ref().unwrap_err();
    assert_eq!(error.code(), "warehouse_error");
    assert_eq!((r.proxy.queries(), r.retries()), (3, 2), "{}", r.logs);
    let line = r.failure_line();
    assert!(
        line.contains("class=\"transient\"") && line.contains("attempts=3"),
        "{line}"
    );
    r.assert_previous_kept_and_stamped().await;
    // The same warm app refreshes once the network is healthy again.
    r.proxy.inject(Fault::Refuse, 0);
    let answer = handler::handle(&r.app, json!({"experiment_id": r.id}), None)
        .await
        .unwrap();
    assert_eq!(answer["exposures"]["payload"], payload(48));
}

#[tokio::test]
async fn attempts_setting_bounds_the_retries() {
    let r = run_with(
        Options::default(),
        Fault::ResetAfterRequest,
        usize::MAX,
        &[("EXPOSURES_CLICKHOUSE_ATTEMPTS", "1")],
        None,
    )
    .await;
    assert_eq!(r.answer.as_ref().unwrap_err().code(), "warehouse_error");
    assert_eq!((r.proxy.queries(), r.retries()), (1, 0), "{}", r.logs);
    r.assert_previous_kept_and_stamped().await;
}

#[tokio::test]
async fn garbage_answer_fails_at_once_as_permanent() {
    let r = run(Fault::Garbage, usize::MAX).await;
    let error = r.answer.as_ref().unwrap_err();
    assert_eq!(error.code(), "warehouse_error");
    assert_eq!((r.proxy.queries(), r.retries()), (1, 0), "{}", r.logs);
    assert!(
        r.failure_line().contains("class=\"permanent\""),
        "{}",
        r.logs
    );
    r.assert_previous_kept_and_stamped().await;
}

#[tokio::test]
async fn silent_server_times_out_without_retry() {
    let r = run_with(
        Options::default(),
        Fault::Silent,
        usize::MAX,
        &[("EXPOSURES_QUERY_TIMEOUT_SECONDS", "1")],
        None,
    )
    .await;
    let error = r.answer.as_ref().unwrap_err();
    assert!(
        error.to_string().contains("did not answer within"),
        "{error}"
    );
    assert_eq!((r.proxy.queries(), r.retries()), (1, 0), "{}", r.logs);
    assert!(r.failure_line().contains("class=\"timeout\""), "{}", r.logs);
    r.assert_previous_kept_and_stamped().await;
}

#[tokio::test]
async fn retries_stop_before_the_invocation_deadline() {
    // 8 s left, 5 s kept for the failure stamp: the silent attempt is stopped at ~3 s
    // although the query timeout (20 s) would allow more.
    let r = run_with(
        Options::default(),
        Fault::Silent,
        usize::MAX,
        &[],
        Some(Duration::from_secs(8)),
    )
    .await;
    let error = r.answer.as_ref().unwrap_err();
    assert!(error.to_string().contains("time ran out"), "{error}");
    assert!(r.elapsed < Duration::from_secs(6), "{:?}", r.elapsed);
    assert!(r.failure_line().contains("class=\"timeout\""), "{}", r.logs);
    r.assert_previous_kept_and_stamped().await;
}

/// Every fault case with both passwords set: neither appears in any log line
/// (every level, every crate), any answer or any error body.
#[tokio::test]
async fn no_password_leaks_under_faults() {
    let _shared = TLS_POSTGRES.read().await;
    let mut seen = String::new();
    for (fault, times) in [
        (Fault::Refuse, 1),
        (Fault::ResetAfterRequest, usize::MAX),
        (Fault::CutAnswer(1200), usize::MAX),
        (Fault::Status(503), usize::MAX),
        (Fault::Garbage, 1),
        (Fault::Silent, 1),
    ] {
        let (logs, guard) = Logs::capture();
        let r = run_with(
            secret_options(),
            fault,
            times,
            &[("EXPOSURES_QUERY_TIMEOUT_SECONDS", "1")],
            None,
        )
        .await;
        // The same fault through the API: the error body as a client sees it.
        r.proxy.inject(fault, times);
        let request = crate::api::v2(
            "POST",
            &format!("/experiments/{}/exposures/refresh", r.id),
            Some(&r.id.to_string()),
        );
        let api = handler::handle(&r.app, request, None).await.unwrap();
        drop(guard);
        match &r.answer {
            Ok(answer) => seen.push_str(&answer.to_string()),
            Err(e) => seen.push_str(&format!("{e}\n{e:?}\n")),
        }
        seen.push_str(&api.to_string());
        seen.push_str(&r.logs);
        seen.push_str(&logs.text());
    }
    // Unreachable PostgreSQL and a wrong ClickHouse password, with the passwords set.
    let env = TestEnv::with(secret_options()).await;
    let id = env.experiment(Some(START), None).await;
    let (logs, guard) = Logs::capture();
    let (_, port) = host_port(&postgres_tls_base_url());
    for app in [
        env.another_app(&[("CLICKHOUSE_PASSWORD", "not-it")]),
        env.another_app(&[(
            "DATABASE_URL",
            &format!(
                "postgres://exposures_secret:{PG_SECRET_PASSWORD}@127.0.0.1:{port}/nonexistent_db"
            ),
        )]),
    ] {
        let e = handler::handle(&app, json!({"experiment_id": id}), None)
            .await
            .unwrap_err();
        seen.push_str(&format!("{e}\n{e:?}\n"));
    }
    drop(guard);
    seen.push_str(&logs.text());

    assert!(seen.len() > 10_000, "captured too little: {}", seen.len());
    assert!(seen.contains("exposures_secret"), "the accounts were used");
    assert!(
        !seen.contains(CH_SECRET_PASSWORD),
        "ClickHouse password leaked"
    );
    assert!(
        !seen.contains(PG_SECRET_PASSWORD),
        "PostgreSQL password leaked"
    );
}

/// Reads the stored row through a new connection (the test's own one may have
/// been cut by a server restart).
async fn stored_fresh(url: &str, id: i64) -> Value {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT to_jsonb(x) FROM experiment_exposures x WHERE experiment_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_warm_app_survives_a_postgres_restart_between_invocations() {
    let _exclusive = TLS_POSTGRES.write().await;
    let env = TestEnv::with(secret_options()).await;
    let admin_url = format!(
        "{}/{}",
        postgres_tls_base_url(),
        env.settings["CLICKHOUSE_DATABASE"]
    );
    let id = env.experiment(Some(START), None).await;
    env.insert(&events()).await;
    env.set_now(ts(BEFORE));
    env.invoke(json!({"experiment_id": id})).await.unwrap();

    servers("pg-tls-restart");
    env.set_now(ts(NOW));
    let (logs, guard) = Logs::capture();
    let answer = env.invoke(json!({"experiment_id": id})).await;
    drop(guard);
    let answer = answer.unwrap_or_else(|e| panic!("{e}\n{}", logs.text()));
    assert_eq!(answer["exposures"]["payload"], payload(48));
    assert_eq!(stored_fresh(&admin_url, id).await["payload"], payload(48));

    // The API refresh, whose throttle claim is never repeated blindly, also
    // finds a working connection after another restart.
    servers("pg-tls-restart");
    let request = crate::api::v2(
        "POST",
        &format!("/experiments/{id}/exposures/refresh"),
        Some(&id.to_string()),
    );
    let api = handler::handle(&env.app, request, None).await.unwrap();
    assert_eq!(api["statusCode"], 200, "{api}");
    let stored = stored_fresh(&admin_url, id).await;
    assert!(stored["refresh_requested_at"].is_string(), "{stored}");
    assert_eq!(stored["payload"], payload(48));
}

#[tokio::test]
async fn clickhouse_killed_mid_query_then_restarted() {
    servers("victim-start");
    let victim = clickhouse::Client::default()
        .with_url(clickhouse_victim_url())
        .with_validation(false);
    let env = TestEnv::new().await;
    let database = env.settings["CLICKHOUSE_DATABASE"].clone();
    victim
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .unwrap();
    let victim = victim.with_database(&database);
    let ddl = include_str!("../../migrations/clickhouse/events_clickhouse_18.sql")
        .replace("TABLE IF NOT EXISTS events", "TABLE events_data");
    victim.query(&ddl).execute().await.unwrap();
    // A slow events table: every row read sleeps 0.25 s, so the query is still
    // running when the server is killed.
    victim
        .query("CREATE VIEW events AS SELECT * FROM events_data WHERE sleepEachRow(0.25) = 0")
        .execute()
        .await
        .unwrap();
    crate::helpers::insert(
        &victim,
        "events_data",
        &[
            exposure("u1", "control", "2026-06-01T01:00:00Z"),
            exposure("u2", "variant_a", "2026-06-01T01:30:00Z"),
            exposure("u3", "control", "2026-06-02T05:00:00Z"),
            exposure("u4", "variant_a", "2026-06-02T06:00:00Z"),
        ],
    )
    .await;
    let id = env.experiment(Some(START), None).await;
    let app = env.another_app(&[("CLICKHOUSE_URL", &clickhouse_victim_url())]);
    env.set_now(ts(BEFORE));
    let first = handler::handle(&app, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    let before = first["exposures"]["payload"].clone();
    assert_eq!(
        before["timeseries"]["points"],
        json!([{"bucket": "2026-06-01T01:00:00Z", "new_identities": {"control": 1, "variant_a": 1}}])
    );

    env.set_now(ts(NOW));
    let (logs, guard) = Logs::capture();
    let pid_file = state_dir().join("clickhouse-victim/clickhouse-server.pid");
    let killer = async {
        let monitor = clickhouse::Client::default()
            .with_url(clickhouse_victim_url())
            .with_validation(false);
        for _ in 0..200 {
            let running: u64 = monitor
                .query(
                    "SELECT count() FROM system.processes \
                     WHERE (query LIKE '%sipHash128%' OR query LIKE '%changed_hits%') \
                       AND query NOT LIKE '%system.processes%'",
                )
                .fetch_one()
                .await
                .unwrap_or(0);
            if running > 0 {
                let pid = std::fs::read_to_string(&pid_file).unwrap();
                let status = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status()
                    .unwrap();
                assert!(status.success());
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the refresh query never showed up in system.processes");
    };
    let (answer, ()) = tokio::join!(
        handler::handle(&app, json!({"experiment_id": id}), None),
        killer
    );
    drop(guard);
    let logs = logs.text();
    let error = answer.unwrap_err();
    assert_eq!(error.code(), "warehouse_error", "{error}");
    let failed = logs.lines().find(|l| l.contains("refresh failed")).unwrap();
    assert!(
        failed.contains("class=\"transient\"") && failed.contains("attempts=3"),
        "{logs}"
    );
    assert_eq!(logs.matches("retrying").count(), 2, "{logs}");
    println!(
        "{}",
        logs.lines()
            .filter(|l| l.contains("retrying") || l.contains("refresh failed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stored = env.stored(id).await;
    assert_eq!(stored["payload"], before, "previous payload kept");
    assert_eq!(stored["as_of"], json!("2026-06-02T00:00:00+00:00"));
    assert!(stored["last_error_at"].is_string());

    // Restarted, the same warm app refreshes (its data survived the kill).
    servers("victim-start");
    let answer = handler::handle(&app, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    assert_eq!(answer["outcome"], "refreshed");
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["points"],
        json!([
            {"bucket": "2026-06-01T01:00:00Z", "new_identities": {"control": 1, "variant_a": 1}},
            {"bucket": "2026-06-02T05:00:00Z", "new_identities": {"control": 1}},
            {"bucket": "2026-06-02T06:00:00Z", "new_identities": {"variant_a": 1}}
        ])
    );
    assert_eq!(env.stored(id).await["last_error_at"], Value::Null);
}
