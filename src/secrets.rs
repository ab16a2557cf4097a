//! Credentials from AWS Secrets Manager, read once at cold start through the
//! AWS Parameters and Secrets Lambda Extension (an HTTP endpoint on localhost).
//!
//! The extension signs and caches the Secrets Manager calls, so the function
//! needs neither the AWS SDK nor a second TLS stack for it.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::{Config, ConfigError, Secret};

/// Secret holding the ClickHouse password (plain, or JSON with `password` and optionally `username`).
pub const CLICKHOUSE_PASSWORD_SECRET: &str = "CLICKHOUSE_PASSWORD_SECRET_ARN";
/// Secret holding the PostgreSQL connection (a URL, or an RDS-style JSON secret).
pub const DATABASE_URL_SECRET: &str = "DATABASE_URL_SECRET_ARN";

/// Replaces the settings whose secret ARN variable is set with the secrets' values.
pub async fn resolve(
    config: &mut Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let arn = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let (password_arn, database_arn) = (arn(CLICKHOUSE_PASSWORD_SECRET), arn(DATABASE_URL_SECRET));
    if password_arn.is_none() && database_arn.is_none() {
        return Ok(());
    }
    let extension = Extension {
        port: lookup("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT").unwrap_or_else(|| "2773".into()),
        token: lookup("AWS_SESSION_TOKEN").unwrap_or_default(),
    };
    if let Some(arn) = password_arn {
        let secret = extension.get(CLICKHOUSE_PASSWORD_SECRET, &arn).await?;
        let (user, password) = clickhouse_credentials(&secret);
        if let Some(user) = user {
            config.clickhouse_user = user;
        }
        config.clickhouse_password = password;
    }
    if let Some(arn) = database_arn {
        let secret = extension.get(DATABASE_URL_SECRET, &arn).await?;
        let verify = config.database_ca_file.is_some();
        config.database_url = database_url(&secret, verify).map_err(|reason| ConfigError {
            variable: DATABASE_URL_SECRET,
            reason,
        })?;
    }
    Ok(())
}

struct Extension {
    port: String,
    token: String,
}

impl Extension {
    async fn get(&self, variable: &'static str, secret_id: &str) -> Result<String, ConfigError> {
        let fail = |reason: String| ConfigError { variable, reason };
        let uri = format!(
            "http://localhost:{}/secretsmanager/get?secretId={}",
            self.port,
            url_encode(secret_id)
        );
        let request = hyper::Request::get(uri)
            .header("X-Aws-Parameters-Secrets-Token", &self.token)
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(format!("bad secret id ({e})")))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| fail("the Parameters and Secrets extension did not answer within 10 s".into()))?
            .map_err(|e| fail(format!("the Parameters and Secrets extension is unreachable ({e}); is its layer attached?")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(format!("reading the secret failed ({e})")))?
            .to_bytes();
        if !status.is_success() {
            // The body names the problem (not found, access denied) and never holds the secret.
            let detail = String::from_utf8_lossy(&body);
            return Err(fail(format!(
                "Secrets Manager answered {status}: {}",
                detail.trim()
            )));
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|_| fail("the extension's answer is not JSON".into()))?;
        value["SecretString"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                fail("the secret has no SecretString (binary secrets are not supported)".into())
            })
    }
}

/// A plain password, or a JSON secret with `password` (and `username`).
fn clickhouse_credentials(secret: &str) -> (Option<String>, Secret) {
    match serde_json::from_str::<Value>(secret) {
        Ok(Value::Object(map)) if map.contains_key("password") => (
            map.get("username")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Secret::new(map["password"].as_str().unwrap_or_default()),
        ),
        _ => (None, Secret::new(secret)),
    }
}

/// A connection URL, or the JSON of an RDS-managed secret
/// (`username`, `password`, `host`, `port`, `dbname`), which becomes a
/// key/value connection string: `sslmode=verify-full` when a CA bundle is
/// configured (`verify`), else `require` (encrypted, certificate not checked),
/// so that a first deploy without the RDS bundle beside the binary works.
fn database_url(secret: &str, verify: bool) -> Result<Secret, String> {
    let trimmed = secret.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return Ok(Secret::new(trimmed));
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) else {
        return Err("the secret is neither a postgres:// URL nor a JSON object".into());
    };
    let field = |key: &str| match map.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut parts = Vec::new();
    for (key, name, required) in [
        ("host", "host", true),
        ("port", "port", false),
        ("username", "user", true),
        ("password", "password", true),
        ("dbname", "dbname", false),
    ] {
        match field(key) {
            Some(value) => parts.push(format!(
                "{name}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
            None if required => return Err(format!("the JSON secret has no \"{key}\"")),
            None => {}
        }
    }
    parts.push(
        if verify {
            "sslmode=verify-full"
        } else {
            "sslmode=require"
        }
        .into(),
    );
    Ok(Secret::new(parts.join(" ")))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_secret_forms() {
        let (user, password) = clickhouse_credentials("s3cret");
        assert_eq!((user, password.expose()), (None, "s3cret"));
        let (user, password) = clickhouse_credentials(r#"{"username": "reader", "password": "p"}"#);
        assert_eq!((user.as_deref(), password.expose()), (Some("reader"), "p"));
    }

    #[test]
    fn database_secret_forms() {
        assert_eq!(
            database_url(" postgres://u:p@h/db ", true)
                .unwrap()
                .expose(),
            "postgres://u:p@h/db"
        );
        let rds = r#"{"username": "app", "password": "it's\\x", "engine": "postgres",
                      "host": "db.example.internal", "port": 5432, "dbname": "product"}"#;
        let s = database_url(rds, false).unwrap();
        assert_eq!(
            s.expose(),
            r"host='db.example.internal' port='5432' user='app' password='it\'s\\x' dbname='product' sslmode=require"
        );
        assert!(s.expose().parse::<tokio_postgres::Config>().is_ok());
        // With a CA bundle configured, the host is verified too.
        let s = database_url(rds, true).unwrap();
        assert!(
            s.expose().ends_with(" sslmode=verify-full"),
            "{}",
            s.expose()
        );
        let (_, mode) = crate::conninfo::parse(s.expose()).unwrap();
        assert_eq!(mode, crate::conninfo::SslMode::VerifyFull);
        assert!(database_url(r#"{"username": "a"}"#, false)
            .unwrap_err()
            .contains("\"host\""));
        assert!(database_url("hunter2", false).is_err());
    }

    #[test]
    fn secret_ids_are_url_encoded() {
        assert_eq!(
            url_encode("arn:aws:secretsmanager:eu-west-1:1:secret:a/b+c"),
            "arn%3Aaws%3Asecretsmanager%3Aeu-west-1%3A1%3Asecret%3Aa%2Fb%2Bc"
        );
    }
}
