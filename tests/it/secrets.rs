//! Secrets through the Parameters and Secrets extension protocol. AWS is not
//! reachable here, so a local HTTP endpoint plays the extension; the secret it
//! serves is the real test database's URL, used for a real refresh.

use std::collections::HashMap;

use exposures::{secrets, App, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{exposure, ts, TestEnv};

/// Serves `secrets` (secret id -> SecretString) like the extension does, checking the token.
pub(crate) async fn fake_extension(secrets: HashMap<String, String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0; 8192];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let id = request
                .split_whitespace()
                .nth(1)
                .and_then(|path| path.split("secretId=").nth(1))
                .unwrap_or_default()
                .replace("%3A", ":");
            let token_ok = request
                .to_ascii_lowercase()
                .contains("x-aws-parameters-secrets-token: session-token");
            let (status, body) = match secrets.get(&id) {
                _ if !token_ok => ("401 Unauthorized", "missing token".to_owned()),
                Some(value) => (
                    "200 OK",
                    json!({"Name": id, "SecretString": value}).to_string(),
                ),
                None => (
                    "400 Bad Request",
                    "ResourceNotFoundException: Secrets Manager can't find the specified secret."
                        .into(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    port
}

fn lookup(vars: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    |name| vars.get(name).cloned()
}

#[tokio::test]
async fn credentials_come_from_the_secrets_extension() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;

    let database_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:exposures-db";
    let clickhouse_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:exposures-ch";
    let port = fake_extension(HashMap::from([
        (
            database_arn.to_owned(),
            env.settings["DATABASE_URL"].clone(),
        ),
        (
            clickhouse_arn.to_owned(),
            r#"{"username": "default", "password": ""}"#.to_owned(),
        ),
    ]))
    .await;

    let mut vars = env.settings.clone();
    vars.insert(
        "DATABASE_URL".into(),
        "postgres://nobody@127.0.0.1:1/wrong".into(),
    );
    vars.insert("CLICKHOUSE_USER".into(), "limited".into());
    vars.insert("DATABASE_URL_SECRET_ARN".into(), database_arn.into());
    vars.insert(
        "CLICKHOUSE_PASSWORD_SECRET_ARN".into(),
        clickhouse_arn.into(),
    );
    vars.insert(
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".into(),
        port.to_string(),
    );
    vars.insert("AWS_SESSION_TOKEN".into(), "session-token".into());

    let mut config = Config::from_lookup(lookup(&vars)).unwrap();
    secrets::resolve(&mut config, lookup(&vars)).await.unwrap();
    assert_eq!(
        config.clickhouse_user, "default",
        "user from the JSON secret"
    );
    let app = App::new(config)
        .unwrap()
        .with_clock(std::sync::Arc::new(|| ts("2026-06-01T02:00:00Z")));
    let answer = exposures::handler::handle(&app, json!({"experiment_id": id}), None)
        .await
        .unwrap();
    assert_eq!(answer["outcome"], "refreshed", "{answer}");
}

#[tokio::test]
async fn secret_errors_name_the_variable() {
    let port = fake_extension(HashMap::new()).await;
    let vars: HashMap<String, String> = HashMap::from([
        (
            "DATABASE_URL_SECRET_ARN".into(),
            "arn:aws:secretsmanager:eu-west-1:1:secret:missing".into(),
        ),
        (
            "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".into(),
            port.to_string(),
        ),
        ("AWS_SESSION_TOKEN".into(), "session-token".into()),
    ]);
    let mut config = Config::from_lookup(lookup(&vars)).unwrap();
    let err = secrets::resolve(&mut config, lookup(&vars))
        .await
        .unwrap_err();
    assert_eq!(err.variable, "DATABASE_URL_SECRET_ARN");
    assert!(
        err.reason.contains("can't find the specified secret"),
        "{err}"
    );

    let mut vars = vars;
    vars.insert("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".into(), "1".into());
    let err = secrets::resolve(&mut config, lookup(&vars))
        .await
        .unwrap_err();
    assert!(err.reason.contains("is its layer attached?"), "{err}");
}
