//! The Lambda handler: one entry point for every way the function is called.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::error::Error;
use crate::intake::{self, Command, Invocation};
use crate::service::App;
use crate::sweep;

/// Handles one invocation. API Gateway requests always get a proxy response
/// (errors become statuses); other invocations fail with a typed error.
/// `deadline` is when Lambda will stop the invocation (the sweep plans around it).
pub async fn handle(
    app: &App,
    event: Value,
    deadline: Option<DateTime<Utc>>,
) -> Result<Value, Error> {
    match intake::parse(&event)? {
        Invocation::Command(command) => run_command(app, command, deadline).await,
        Invocation::Http(request) => Ok(crate::api::respond(app, &request, deadline).await),
    }
}

/// Lambda's `Lambda-Runtime-Deadline-Ms` as a time. Local emulators may send a
/// value that is not wall-clock milliseconds (cargo lambda 1.9 does); anything
/// before 2020 is taken as "no deadline known".
pub fn deadline_from_millis(millis: u64) -> Option<DateTime<Utc>> {
    const PLAUSIBLE_FROM_MS: i64 = 1_577_836_800_000; // 2020-01-01T00:00:00Z
    i64::try_from(millis)
        .ok()
        .filter(|ms| *ms >= PLAUSIBLE_FROM_MS)
        .and_then(DateTime::from_timestamp_millis)
}

async fn run_command(
    app: &App,
    command: Command,
    deadline: Option<DateTime<Utc>>,
) -> Result<Value, Error> {
    match command {
        Command::Refresh { experiment_id } => {
            let (outcome, view) = app.refresh(experiment_id, deadline).await?;
            let mut answer = json!({"outcome": outcome});
            merge(&mut answer, &view);
            Ok(answer)
        }
        Command::Migrate => {
            let applied = app.store.migrate().await?;
            tracing::info!(applied = ?applied, "migrated");
            Ok(json!({"migrated": applied}))
        }
        Command::RefreshDue => {
            Ok(serde_json::to_value(sweep::refresh_due(app, deadline).await?).unwrap_or_default())
        }
    }
}

fn merge(target: &mut Value, extra: &impl serde::Serialize) {
    if let (Value::Object(t), Ok(Value::Object(e))) = (target, serde_json::to_value(extra)) {
        t.extend(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_from_the_runtime() {
        let d = deadline_from_millis(1_781_179_200_000).unwrap();
        assert_eq!(crate::rfc3339::format(&d), "2026-06-11T12:00:00Z");
        assert_eq!(deadline_from_millis(0), None);
        assert_eq!(deadline_from_millis(1_085_951), None);
        assert_eq!(deadline_from_millis(u64::MAX), None);
    }
}
