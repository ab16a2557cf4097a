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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timestamp_type: "DateTime",
            clickhouse_url: None,
            settings: Vec::new(),
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

        let (admin, conn) = tokio_postgres::connect(
            &format!("{}/postgres", postgres_base_url()),
            tokio_postgres::NoTls,
        )
        .await
        .expect("PostgreSQL test server reachable (run scripts/servers.sh start)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let database_url = format!("{}/{name}", postgres_base_url());
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
            ("DATABASE_URL".into(), database_url),
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
