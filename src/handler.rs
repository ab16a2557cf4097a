//! The Lambda handler: one entry point for every way the function is called.

use serde_json::{json, Value};

use crate::error::Error;
use crate::intake::{self, Command, Invocation};
use crate::service::App;

/// Handles one invocation. API Gateway requests always get a proxy response
/// (errors become statuses); other invocations fail with a typed error.
pub async fn handle(app: &App, event: Value) -> Result<Value, Error> {
    match intake::parse(&event)? {
        Invocation::Command(command) => run_command(app, command).await,
        Invocation::Http(request) => Ok(crate::api::respond(app, &request).await),
    }
}

async fn run_command(app: &App, command: Command) -> Result<Value, Error> {
    match command {
        Command::Refresh { experiment_id } => {
            let (outcome, view) = app.refresh(experiment_id).await?;
            let mut answer = json!({"outcome": outcome});
            merge(&mut answer, &view);
            Ok(answer)
        }
        Command::Migrate => {
            let applied = app.store.migrate().await?;
            tracing::info!(applied = ?applied, "migrated");
            Ok(json!({"migrated": applied}))
        }
        Command::RefreshDue => Err(Error::BadInput(intake::IntakeError(
            "the sweep (\"refresh_due\") is not available in this build yet".into(),
        ))),
    }
}

fn merge(target: &mut Value, extra: &impl serde::Serialize) {
    if let (Value::Object(t), Ok(Value::Object(e))) = (target, serde_json::to_value(extra)) {
        t.extend(e);
    }
}
