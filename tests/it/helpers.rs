//! Test helpers: every test gets its own PostgreSQL database and ClickHouse
//! database on the real servers started by `scripts/servers.sh`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use exposures::service::Clock;
use exposures::{handler, App, Config, Error};
use serde_json::Value;

/// ClickHouse HTTP endpoint of the test server.
pub fn clickhouse_url() -> String {
    std::env::var("EXPOSURES_TEST_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// PostgreSQL server of the tests, without a database name.
pub fn postgres_base_url() -> String {
    std::env::var("EXPOSURES_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432".into())
}

/// The PostgreSQL server with TLS on (throwaway certificate), without a database name.
pub fn postgres_tls_base_url() -> String {
    std::env::var("EXPOSURES_TEST_POSTGRES_TLS_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15433".into())
}

/// The test ClickHouse server's https port.
pub fn clickhouse_https_url() -> String {
    std::env::var("EXPOSURES_TEST_CLICKHOUSE_HTTPS_URL")
        .unwrap_or_else(|_| "https://127.0.0.1:18443".into())
}

/// The ClickHouse instance the tests may kill (scripts/servers.sh victim-start).
pub fn clickhouse_victim_url() -> String {
    std::env::var("EXPOSURES_TEST_CLICKHOUSE_VICTIM_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18124".into())
}

/// Throwaway passwords of the test servers (scripts/servers.sh): ClickHouse user
/// `exposures_secret`, PostgreSQL role `exposures_secret` on the TLS server.
pub const CH_SECRET_PASSWORD: &str = "ch-Secret-7f3a9";
pub const PG_SECRET_PASSWORD: &str = "pg-Secret-41c8e";

/// scripts/servers.sh's state directory.
pub fn state_dir() -> std::path::PathBuf {
    std::env::var("EXPOSURES_STATE_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/servers"))
}

/// A file of the throwaway CA made by scripts/servers.sh (`ca.crt`, `other-ca.crt`).
pub fn tls_file(name: &str) -> String {
    state_dir().join("tls").join(name).display().to_string()
}

/// Runs `scripts/servers.sh <command>` (same ports as the tests, from the environment).
pub fn servers(command: &str) {
    script("servers.sh", &[command]);
}

/// Runs `scripts/<name> <args>` and fails the test with its output unless it succeeds.
pub fn script(name: &str, args: &[&str]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = std::process::Command::new(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tests that use the TLS PostgreSQL server hold this for reading; the test
/// that restarts it holds it for writing.
pub static TLS_POSTGRES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Creates a fresh database on the TLS PostgreSQL server (as `postgres`, over
/// loopback without TLS) and returns its name.
pub async fn tls_database() -> String {
    let name = unique_name();
    let (admin, conn) = tokio_postgres::connect(
        &format!("{}/postgres", postgres_tls_base_url()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("TLS PostgreSQL test server reachable (run scripts/servers.sh start)");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    name
}

/// Host and port of a `postgres://host:port` base URL.
pub fn host_port(base_url: &str) -> (String, u16) {
    let rest = base_url.rsplit('@').next().unwrap();
    let (host, port) = rest.split_once(':').unwrap();
    (host.to_owned(), port.trim_end_matches('/').parse().unwrap())
}

/// Captures every log event (all levels, all crates) of the current thread
/// while the guard lives; read them with [`Logs::text`].
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        use lambda_runtime::tracing::subscriber;
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses `2026-06-01T00:00:00Z`.
pub fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// One row of the events table.
#[derive(Debug, Clone)]
pub struct Ev {
    pub environment_key: String,
    pub event: String,
    pub feature_name: String,
    pub identifier: String,
    pub value: String,
    pub at: DateTime<Utc>,
}

/// An exposure of `identifier` to `value` at `at`, in environment `prod` for flag `checkout`.
pub fn exposure(identifier: &str, value: &str, at: &str) -> Ev {
    Ev {
        environment_key: "prod".into(),
        event: "$flag_exposure".into(),
        feature_name: "checkout".into(),
        identifier: identifier.into(),
        value: value.into(),
        at: ts(at),
    }
}

/// Renders an INSERT of `events` with every value bound; `timestamp` is the SQL
/// that turns the bound number (seconds or milliseconds) into the column's type.
pub fn insert_sql(client: &clickhouse::Client, table: &str, events: &[Ev], millis: bool) -> String {
    let tuple = if millis {
        "(?, ?, ?, ?, ?, fromUnixTimestamp64Milli(toInt64(?)))"
    } else {
        "(?, ?, ?, ?, ?, toDateTime(?))"
    };
    let template = format!(
        "INSERT INTO ? (environment_key, event, feature_name, identifier, value, timestamp) VALUES {}",
        vec![tuple; events.len()].join(", ")
    );
    let mut query = client
        .query(&template)
        .bind(clickhouse::sql::Identifier(table));
    for e in events {
        query = query
            .bind(&e.environment_key)
            .bind(&e.event)
            .bind(&e.feature_name)
            .bind(&e.identifier)
            .bind(&e.value);
        query = if millis {
            query.bind(e.at.timestamp_millis())
        } else {
            query.bind(e.at.timestamp())
        };
    }
    query.sql_display().to_string()
}

/// Inserts `events` into `table` (a `DateTime` column) through `client`.
pub async fn insert(client: &clickhouse::Client, table: &str, events: &[Ev]) {
    if events.is_empty() {
        return;
    }
    // The rendered SQL goes back through `query`, which would read a `?` in a value as a bind.
    let sql = insert_sql(client, table, events, false);
    client
        .query(&sql.replace('?', "??"))
        .execute()
        .await
        .expect("insert events");
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique_name() -> String {
    format!(
        "exposures_t{}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_subsec_micros(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for a test environment.
pub struct Options {
    /// Column type of `timestamp` in the ClickHouse events table.
    pub timestamp_type: &'static str,
    /// Overrides `CLICKHOUSE_URL` (e.g. an unreachable port).
    pub clickhouse_url: Option<String>,
    /// Extra settings for the function's configuration.
    pub settings: Vec<(&'static str, String)>,
    /// The app's `DATABASE_URL` for a database name, instead of the test server's
    /// (the test's database is still made on the test server).
    pub database_url: Option<fn(&str) -> String>,
    /// The PostgreSQL server holding the test's database (default: the plain test server).
    pub postgres_base_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timestamp_type: "DateTime",
            clickhouse_url: None,
            settings: Vec::new(),
            database_url: None,
            postgres_base_url: None,
        }
    }
}

/// A fresh pair of databases and an `App` pointed at them.
pub struct TestEnv {
    pub app: App,
    /// ClickHouse client on the test's own database.
    pub clickhouse: clickhouse::Client,
    /// PostgreSQL client on the test's own database.
    pub pg: tokio_postgres::Client,
    /// Settings the app was built from (to build more apps on the same databases).
    pub settings: HashMap<String, String>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let name = unique_name();

        let server = clickhouse::Client::default()
            .with_url(clickhouse_url())
            .with_validation(false);
        server
            .query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await
            .expect("ClickHouse test server reachable (run scripts/servers.sh start)");
        let clickhouse = server.clone().with_database(&name);
        let ddl = include_str!("../../migrations/clickhouse/events_clickhouse_18.sql")
            .replace("DateTime\n", &format!("{}\n", options.timestamp_type));
        clickhouse
            .query(&ddl)
            .execute()
            .await
            .expect("create events table");

        let pg_base = options
            .postgres_base_url
            .clone()
            .unwrap_or_else(postgres_base_url);
        let (admin, conn) =
            tokio_postgres::connect(&format!("{pg_base}/postgres"), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL test server reachable (run scripts/servers.sh start)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let database_url = format!("{pg_base}/{name}");
        let (pg, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
            .await
            .expect("connect test database");
        tokio::spawn(conn);

        let mut settings: HashMap<String, String> = HashMap::from([
            (
                "CLICKHOUSE_URL".into(),
                options.clickhouse_url.unwrap_or_else(clickhouse_url),
            ),
            ("CLICKHOUSE_DATABASE".into(), name.clone()),
            (
                "DATABASE_URL".into(),
                options.database_url.map_or(database_url, |url| url(&name)),
            ),
            ("EXPOSURES_QUERY_TIMEOUT_SECONDS".into(), "20".into()),
        ]);
        settings.extend(options.settings.into_iter().map(|(k, v)| (k.to_owned(), v)));

        let now = Arc::new(Mutex::new(Utc::now()));
        let clock_now = Arc::clone(&now);
        let config = Config::from_lookup(|k| settings.get(k).cloned()).expect("test config");
        let app = App::new(config)
            .expect("app")
            .with_clock(Arc::new(move || *clock_now.lock().unwrap()));
        app.store.migrate().await.expect("migrations apply");
        Self {
            app,
            clickhouse,
            pg,
            settings,
            now,
        }
    }

    /// Another app on the same databases (its own pools and caches).
    pub fn another_app(&self, overrides: &[(&str, &str)]) -> App {
        let now = Arc::clone(&self.now);
        self.app_with_clock(overrides, Arc::new(move || *now.lock().unwrap()))
    }

    /// An app whose ClickHouse refuses connections (nothing listens on port 1).
    pub fn app_without_clickhouse(&self) -> App {
        self.another_app(&[("CLICKHOUSE_URL", "http://127.0.0.1:1")])
    }

    /// An app whose PostgreSQL refuses connections; its URL carries a password
    /// (`hunter2`) so tests can check it never shows.
    pub fn app_without_postgres(&self) -> App {
        self.another_app(&[(
            "DATABASE_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/none?connect_timeout=2",
        )])
    }

    /// Another app on the same databases with its own clock.
    pub fn app_with_clock(&self, overrides: &[(&str, &str)], clock: Clock) -> App {
        let mut settings = self.settings.clone();
        settings.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let config = Config::from_lookup(|k| settings.get(k).cloned()).expect("test config");
        App::new(config).expect("app").with_clock(clock)
    }

    /// Sets the app's clock.
    pub fn set_now(&self, t: DateTime<Utc>) {
        *self.now.lock().unwrap() = t;
    }

    pub async fn insert(&self, events: &[Ev]) {
        insert(&self.clickhouse, "events", events).await;
    }

    /// Creates an experiment in `prod` for flag `checkout` and returns its id.
    pub async fn experiment(&self, started_at: Option<&str>, ended_at: Option<&str>) -> i64 {
        self.experiment_for("prod", "checkout", started_at, ended_at)
            .await
    }

    pub async fn experiment_for(
        &self,
        environment_key: &str,
        feature_name: &str,
        started_at: Option<&str>,
        ended_at: Option<&str>,
    ) -> i64 {
        let status = match (started_at, ended_at) {
            (None, _) => "created",
            (Some(_), None) => "running",
            (Some(_), Some(_)) => "completed",
        };
        self.pg
            .query_one(
                "INSERT INTO experiments (environment_key, feature_name, status, started_at, ended_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &environment_key,
                    &feature_name,
                    &status,
                    &started_at.map(ts),
                    &ended_at.map(ts),
                ],
            )
            .await
            .expect("insert experiment")
            .get(0)
    }

    /// Invokes the handler as the Lambda runtime would.
    pub async fn invoke(&self, event: Value) -> Result<Value, Error> {
        handler::handle(&self.app, event, None).await
    }

    /// The stored `experiment_exposures` row as JSON (`null` when absent).
    pub async fn stored(&self, id: i64) -> Value {
        self.pg
            .query_opt(
                "SELECT to_jsonb(x) FROM experiment_exposures x WHERE experiment_id = $1",
                &[&id],
            )
            .await
            .expect("read stored row")
            .map(|row| row.get(0))
            .unwrap_or(Value::Null)
    }
}
