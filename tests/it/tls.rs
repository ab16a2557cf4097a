//! TLS as a deployment meets it: PostgreSQL's `sslmode` against a server with
//! TLS on (a throwaway CA's certificate for localhost / 127.0.0.1, made by
//! scripts/servers.sh) and against one with TLS off, the RDS-managed secret on a
//! first deploy, and ClickHouse over `https://`.

use std::collections::HashMap;

use exposures::{handler, secrets, App, Config};
use serde_json::{json, Value};

use crate::helpers::{
    self, clickhouse_https_url, exposure, host_port, postgres_base_url, postgres_tls_base_url,
    tls_database, tls_file, ts, Options, TestEnv, PG_SECRET_PASSWORD, TLS_POSTGRES,
};

/// An app whose only setting that matters is `DATABASE_URL` (plus `extra`).
fn app(database_url: &str, extra: &[(&str, String)]) -> Result<App, String> {
    let mut vars: HashMap<String, String> =
        HashMap::from([("DATABASE_URL".into(), database_url.to_owned())]);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = Config::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())?;
    App::new(config).map_err(|e| e.to_string())
}

/// `{"action": "migrate"}` through the handler: the answer, or the error's code and message.
async fn migrate(app: &App) -> Result<Value, (String, String)> {
    handler::handle(app, json!({"action": "migrate"}), None)
        .await
        .map_err(|e| (e.code().to_owned(), e.to_string()))
}

/// Whether `database`'s sessions on the server at `base` are TLS, and how many there are.
async fn sessions(base: &str, database: &str) -> (i64, bool) {
    let (admin, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = admin
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            &[&database],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// True when the migrations table exists in `database` (i.e. something was written).
async fn migrated(base: &str, database: &str) -> bool {
    let (client, conn) =
        tokio_postgres::connect(&format!("{base}/{database}"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT to_regclass('exposures_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn tls_url(database: &str, query: &str) -> String {
    let (_, port) = host_port(&postgres_tls_base_url());
    format!("postgres://exposures_secret:{PG_SECRET_PASSWORD}@127.0.0.1:{port}/{database}{query}")
}

fn tls_key_value(database: &str, host: &str, sslmode: &str) -> String {
    let (_, port) = host_port(&postgres_tls_base_url());
    format!(
        "host={host} hostaddr=127.0.0.1 port={port} user=exposures_secret \
         password='{PG_SECRET_PASSWORD}' dbname={database} sslmode={sslmode}"
    )
}

#[tokio::test]
async fn prefer_and_require_connect_to_a_self_signed_server_over_tls() {
    let _shared = TLS_POSTGRES.read().await;
    for query in ["", "?sslmode=prefer", "?sslmode=require"] {
        let database = tls_database().await;
        let app = app(&tls_url(&database, query), &[]).unwrap();
        let answer = migrate(&app)
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e:?}"));
        assert_eq!(
            answer["migrated"].as_array().unwrap().len(),
            exposures::store::MIGRATIONS.len(),
            "{query:?}"
        );
        let (count, tls) = sessions(&postgres_tls_base_url(), &database).await;
        assert!(count >= 1 && tls, "{query:?}: {count} sessions, TLS {tls}");
    }
    // The key/value form, as the RDS secret becomes.
    let database = tls_database().await;
    let app = app(
        &tls_key_value(&database, "db.example.internal", "require"),
        &[],
    )
    .unwrap();
    migrate(&app).await.unwrap();
}

#[tokio::test]
async fn verify_full_without_the_ca_fails_naming_the_certificate_and_writes_nothing() {
    let _shared = TLS_POSTGRES.read().await;
    let database = tls_database().await;
    for url in [
        tls_url(&database, "?sslmode=verify-full"),
        tls_url(&database, "?sslmode=verify-ca"),
        tls_key_value(&database, "127.0.0.1", "verify-full"),
    ] {
        let app = app(&url, &[]).unwrap();
        let (code, message) = migrate(&app).await.unwrap_err();
        assert_eq!(code, "database_unavailable");
        assert!(
            message.contains("TLS") && message.contains("certificate"),
            "{message}"
        );
        assert!(!message.contains(PG_SECRET_PASSWORD), "{message}");
    }
    // A CA that did not sign the server's certificate is no better.
    let app = app(
        &tls_url(&database, "?sslmode=verify-ca"),
        &[("DATABASE_CA_FILE", tls_file("other-ca.crt"))],
    )
    .unwrap();
    let (_, message) = migrate(&app).await.unwrap_err();
    assert!(message.contains("certificate"), "{message}");
    assert!(
        !migrated(&postgres_tls_base_url(), &database).await,
        "nothing written"
    );
}

#[tokio::test]
async fn verify_full_with_the_ca_file_checks_the_host_name_and_verify_ca_does_not() {
    let _shared = TLS_POSTGRES.read().await;
    let ca = [("DATABASE_CA_FILE", tls_file("ca.crt"))];
    let database = tls_database().await;
    // 127.0.0.1 is in the certificate: both forms connect.
    let mut apps = Vec::new();
    for url in [
        tls_url(&database, "?sslmode=verify-full"),
        tls_key_value(&database, "127.0.0.1", "verify-full"),
        tls_key_value(&database, "localhost", "verify-full"),
    ] {
        let app = app(&url, &ca).unwrap();
        migrate(&app).await.unwrap_or_else(|e| panic!("{e:?}"));
        apps.push(app);
    }
    let (count, tls) = sessions(&postgres_tls_base_url(), &database).await;
    assert!(count >= 3 && tls, "{count} sessions, TLS {tls}");

    // A host name the certificate does not name (same address): verify-full refuses...
    let database = tls_database().await;
    let wrong = tls_key_value(&database, "wrong.example.internal", "verify-full");
    let (code, message) = migrate(&app(&wrong, &ca).unwrap()).await.unwrap_err();
    assert_eq!(code, "database_unavailable");
    assert!(
        message.contains("certificate not valid for name"),
        "{message}"
    );
    assert!(!migrated(&postgres_tls_base_url(), &database).await);
    // ... verify-ca, which checks the chain only, connects.
    let ca_only = tls_key_value(&database, "wrong.example.internal", "verify-ca");
    migrate(&app(&ca_only, &ca).unwrap()).await.unwrap();
}

#[tokio::test]
async fn prefer_against_a_server_without_tls_connects_in_plain_text() {
    let env = TestEnv::new().await;
    let database: String = env.settings["CLICKHOUSE_DATABASE"].clone();
    let mut apps = Vec::new(); // kept, so that their sessions can be inspected
    for query in ["", "?sslmode=prefer", "?sslmode=disable"] {
        let url = format!("{}/{database}{query}", postgres_base_url());
        let app = app(&url, &[]).unwrap();
        migrate(&app)
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e:?}"));
        apps.push(app);
    }
    let (count, tls) = sessions(&postgres_base_url(), &database).await;
    assert!(count >= 4 && !tls, "{count} sessions, TLS {tls}");
    // `require` insists on TLS, which this server does not offer.
    let url = format!("{}/{database}?sslmode=require", postgres_base_url());
    let (code, message) = migrate(&app(&url, &[]).unwrap()).await.unwrap_err();
    assert_eq!(code, "database_unavailable", "{message}");
}

#[tokio::test]
async fn bad_sslmode_fails_at_start_naming_the_variable() {
    let Err(error) = app("postgres://u:hunter2@h/db?sslmode=verify_full", &[]) else {
        panic!("a bad sslmode must fail at start");
    };
    assert!(
        error.contains("DATABASE_URL") && error.contains("verify_full"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn rds_managed_secret_works_on_a_first_deploy_and_verifies_with_the_bundle() {
    let _shared = TLS_POSTGRES.read().await;
    let (host, port) = host_port(&postgres_tls_base_url());
    let database = tls_database().await;
    let secret =
        json!({"engine": "postgres", "host": host, "port": port, "username": "exposures_secret",
                        "password": PG_SECRET_PASSWORD, "dbname": database})
        .to_string();
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds-db-1";
    let extension = crate::secrets::fake_extension(HashMap::from([(arn.to_owned(), secret)])).await;
    for ca_file in [None, Some(tls_file("ca.crt"))] {
        let mut vars = HashMap::from([
            ("DATABASE_URL_SECRET_ARN".to_owned(), arn.to_owned()),
            (
                "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".to_owned(),
                extension.to_string(),
            ),
            ("AWS_SESSION_TOKEN".to_owned(), "session-token".to_owned()),
        ]);
        if let Some(ca) = &ca_file {
            vars.insert("DATABASE_CA_FILE".into(), ca.clone());
        }
        let mut config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        secrets::resolve(&mut config, |k| vars.get(k).cloned())
            .await
            .unwrap();
        let expected = if ca_file.is_some() {
            "verify-full"
        } else {
            "require"
        };
        assert!(
            config
                .database_url
                .expose()
                .ends_with(&format!("sslmode={expected}")),
            "with CA file {ca_file:?}"
        );
        let app = App::new(config).unwrap();
        migrate(&app)
            .await
            .unwrap_or_else(|e| panic!("CA file {ca_file:?}: {e:?}"));
        let (count, tls) = sessions(&postgres_tls_base_url(), &database).await;
        assert!(count >= 1 && tls, "{count} sessions, TLS {tls}");
    }
}

#[tokio::test]
async fn clickhouse_over_https_with_the_ca_file_and_a_clear_error_without_it() {
    let env = TestEnv::with(Options {
        clickhouse_url: Some(clickhouse_https_url()),
        settings: vec![("CLICKHOUSE_CA_FILE", tls_file("ca.crt"))],
        ..Options::default()
    })
    .await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[
        exposure("u1", "control", "2026-06-01T01:00:00Z"),
        exposure("u2", "variant_a", "2026-06-01T01:30:00Z"),
    ])
    .await;
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let answer = env.invoke(json!({"experiment_id": id})).await.unwrap();
    assert_eq!(answer["outcome"], "refreshed");
    assert_eq!(
        answer["exposures"]["payload"]["timeseries"]["points"],
        json!([{"bucket": "2026-06-01T01:00:00Z", "new_identities": {"control": 1, "variant_a": 1}}])
    );

    // No CA file (Mozilla roots only), or the wrong one: refused at once, not retried.
    let other_ca = tls_file("other-ca.crt");
    for ca_file in ["", other_ca.as_str()] {
        let (logs, _guard) = helpers::Logs::capture();
        let app = env.app_with_clock(
            &[("CLICKHOUSE_CA_FILE", ca_file)],
            std::sync::Arc::new(|| ts("2026-06-01T03:00:00Z")),
        );
        let error = handler::handle(&app, json!({"experiment_id": id}), None)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "warehouse_error");
        let message = error.to_string();
        assert!(message.contains("certificate"), "{message}");
        let logs = logs.text();
        assert!(!logs.contains("retrying"), "{logs}");
        assert!(
            logs.contains("class=\"permanent\"") || logs.contains("class=permanent"),
            "{logs}"
        );
    }
    // The failures were stamped; the good payload stayed.
    let stored = env.stored(id).await;
    assert!(stored["last_error_at"].is_string(), "{stored}");
    assert_eq!(
        stored["payload"], answer["exposures"]["payload"],
        "previous payload kept"
    );
}
