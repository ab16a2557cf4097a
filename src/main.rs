//! Lambda entry point: build the clients once, then serve invocations.

use std::sync::Arc;

use exposures::{handler, App, Config};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // One crypto provider for every TLS client (ClickHouse over HTTPS, PostgreSQL).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = Config::from_env()?;
    exposures::secrets::resolve(&mut config, |name| std::env::var(name).ok()).await?;
    let app = Arc::new(App::new(config)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let app = Arc::clone(&app);
        let deadline = handler::deadline_from_millis(event.context.deadline);
        async move { handler::handle(&app, event.payload, deadline).await }
    }))
    .await
}
