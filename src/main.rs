//! Lambda entry point: read the configuration and secrets, build the clients
//! once, then serve invocations.

use std::sync::Arc;

use exposures::{handler, secrets, App, Config};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // One crypto provider for every TLS client (ClickHouse over HTTPS, PostgreSQL).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = match start().await {
        Ok(app) => Arc::new(app),
        Err(error) => {
            // Fails the cold start; the message names the variable, never its value.
            tracing::error!(error = %error, "cannot start");
            return Err(error.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let app = Arc::clone(&app);
        let deadline = handler::deadline_from_millis(event.context.deadline);
        async move { handler::handle(&app, event.payload, deadline).await }
    }))
    .await
}

async fn start() -> Result<App, exposures::config::ConfigError> {
    let mut config = Config::from_env()?;
    secrets::resolve(&mut config, |name| std::env::var(name).ok()).await?;
    App::new(config)
}
