//! Event intake: what an invocation's JSON asks for (SPEC 5.2 and 5.3).
//!
//! Dispatch is on the JSON's shape, by hand rather than with an untagged serde
//! enum, so that a malformed input gets a message saying what was expected.

use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayV2httpRequest};
use serde::Deserialize;
use serde_json::{Map, Value};

/// What one invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// A direct or scheduled command.
    Command(Command),
    /// An API Gateway proxy request (REST 1.0 or HTTP 2.0).
    Http(HttpRequest),
}

/// A direct or scheduled command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Refresh one experiment.
    Refresh {
        /// The experiment.
        experiment_id: i64,
    },
    /// Refresh every experiment that is due.
    RefreshDue,
    /// Apply the PostgreSQL migrations.
    Migrate,
}

/// Which API Gateway payload format a request came in (the answer mirrors it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    /// REST API, payload format 1.0.
    V1,
    /// HTTP API, payload format 2.0.
    V2,
}

/// The parts of an API Gateway request routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Payload format of the request.
    pub version: PayloadVersion,
    /// Upper-case HTTP method.
    pub method: String,
    /// The request path as API Gateway saw it (may include a stage or base path).
    pub path: String,
    /// `pathParameters.id` when the route template captured it.
    pub id_param: Option<String>,
}

/// The input could not be understood; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {0}")]
pub struct IntakeError(pub String);

const EXPECTED: &str =
    "expected {\"experiment_id\": N}, {\"action\": \"refresh\", \"experiment_id\": N}, \
{\"action\": \"refresh_due\"}, {\"action\": \"migrate\"}, an EventBridge scheduled event, \
or an API Gateway proxy request";

fn err(message: impl Into<String>) -> IntakeError {
    IntakeError(message.into())
}

/// Reads an invocation payload.
pub fn parse(event: &Value) -> Result<Invocation, IntakeError> {
    let Value::Object(map) = event else {
        return Err(err(format!(
            "the payload is {}, {EXPECTED}",
            describe(event)
        )));
    };
    if map.contains_key("detail-type") {
        return scheduled(map).map(Invocation::Command);
    }
    if map.contains_key("httpMethod") || map.contains_key("routeKey") || map.contains_key("rawPath")
    {
        return http(event, map).map(Invocation::Http);
    }
    command(map, "").map(Invocation::Command)
}

/// A direct command; `context` prefixes messages about a command nested in an envelope.
fn command(map: &Map<String, Value>, context: &str) -> Result<Command, IntakeError> {
    let action = match map.get("action") {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(other) => {
            return Err(err(format!(
                "{context}\"action\" must be a string, got {}",
                describe(other)
            )));
        }
    };
    let allowed: &[&str] = match action {
        None | Some("refresh") => &["action", "experiment_id"],
        Some("refresh_due") | Some("migrate") => &["action"],
        Some(other) => {
            return Err(err(format!(
                "{context}unknown action {other:?}; expected \"refresh\", \"refresh_due\" or \"migrate\""
            )));
        }
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let what = action.map_or("a refresh".to_owned(), |a| format!("action {a:?}"));
        return Err(err(format!(
            "{context}unexpected field {unknown:?} for {what}; {EXPECTED}"
        )));
    }
    match action {
        Some("refresh_due") => Ok(Command::RefreshDue),
        Some("migrate") => Ok(Command::Migrate),
        _ => match map.get("experiment_id") {
            None if map.is_empty() => Err(err(format!("{context}empty object; {EXPECTED}"))),
            None => Err(err(format!(
                "{context}missing \"experiment_id\"; {EXPECTED}"
            ))),
            Some(v) => experiment_id(v)
                .map(|experiment_id| Command::Refresh { experiment_id })
                .map_err(|m| err(format!("{context}{m}"))),
        },
    }
}

/// A positive 64-bit integer, as JSON number (or a string of digits, as path parameters are).
pub fn experiment_id(value: &Value) -> Result<i64, String> {
    let parsed = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_id(s),
        _ => None,
    };
    match parsed {
        Some(id) if id > 0 => Ok(id),
        _ => Err(format!(
            "\"experiment_id\" must be a positive integer, got {}",
            describe(value)
        )),
    }
}

/// Parses a path segment as an experiment id: digits only, positive, fits in `bigint`.
pub fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|id| *id > 0)
}

/// EventBridge rule (`aws.events`, `detail` an object) or Scheduler
/// (`aws.scheduler`, `detail` a JSON string); an empty `detail` means the sweep.
fn scheduled(map: &Map<String, Value>) -> Result<Command, IntakeError> {
    let source = map
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if source != "aws.events" && source != "aws.scheduler" {
        return Err(err(format!(
            "EventBridge event from source {source:?}; only scheduled events from \"aws.events\" or \"aws.scheduler\" are accepted"
        )));
    }
    let detail = match map.get("detail") {
        None | Some(Value::Null) => return Ok(Command::RefreshDue),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Command::RefreshDue),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            err(format!(
                "EventBridge \"detail\" is a string but not JSON ({e})"
            ))
        })?,
        Some(other) => other.clone(),
    };
    match detail {
        Value::Object(d) if d.is_empty() => Ok(Command::RefreshDue),
        Value::Object(d) => command(&d, "EventBridge \"detail\": "),
        other => Err(err(format!(
            "EventBridge \"detail\" must be an object, got {}",
            describe(&other)
        ))),
    }
}

/// REST API (1.0) or HTTP API (2.0) proxy request, read with the canonical
/// `aws_lambda_events` types so that real AWS payloads parse as AWS sends them.
fn http(event: &Value, map: &Map<String, Value>) -> Result<HttpRequest, IntakeError> {
    let is_v2 =
        map.get("version").and_then(Value::as_str) == Some("2.0") || map.contains_key("rawPath");
    if is_v2 {
        let r = ApiGatewayV2httpRequest::deserialize(event)
            .map_err(|e| err(format!("malformed API Gateway HTTP API (2.0) request: {e}")))?;
        let path = r
            .raw_path
            .or(r.request_context.http.path)
            .ok_or_else(|| err("API Gateway request without a path"))?;
        Ok(HttpRequest {
            version: PayloadVersion::V2,
            method: r.request_context.http.method.as_str().to_owned(),
            path,
            id_param: r.path_parameters.get("id").cloned(),
        })
    } else {
        let r = ApiGatewayProxyRequest::deserialize(event)
            .map_err(|e| err(format!("malformed API Gateway REST API (1.0) request: {e}")))?;
        Ok(HttpRequest {
            version: PayloadVersion::V1,
            method: r.http_method.as_str().to_owned(),
            path: r
                .path
                .ok_or_else(|| err("API Gateway request without a path"))?,
            id_param: r.path_parameters.get("id").cloned(),
        })
    }
}

fn describe(value: &Value) -> String {
    let shown = value.to_string();
    if shown.len() > 60 {
        let cut = (0..=60)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}...", &shown[..cut])
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(v: Value) -> Result<Command, String> {
        match parse(&v) {
            Ok(Invocation::Command(c)) => Ok(c),
            Ok(other) => panic!("not a command: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn direct_commands() {
        assert_eq!(
            cmd(json!({"experiment_id": 42})),
            Ok(Command::Refresh { experiment_id: 42 })
        );
        assert_eq!(
            cmd(json!({"action": "refresh", "experiment_id": 42})),
            Ok(Command::Refresh { experiment_id: 42 })
        );
        assert_eq!(
            cmd(json!({"action": "refresh_due"})),
            Ok(Command::RefreshDue)
        );
        assert_eq!(cmd(json!({"action": "migrate"})), Ok(Command::Migrate));
    }

    #[test]
    fn malformed_commands_say_what_is_wrong() {
        let cases = [
            (
                json!({"experiment_id": "abc"}),
                "\"experiment_id\" must be a positive integer, got \"abc\"",
            ),
            (json!({"experiment_id": 0}), "positive integer, got 0"),
            (json!({"experiment_id": -3}), "positive integer, got -3"),
            (json!({"experiment_id": 1.5}), "positive integer, got 1.5"),
            (
                json!({"experiment_id": 9223372036854775808u64}),
                "positive integer",
            ),
            (json!({"experiment_id": null}), "positive integer, got null"),
            (json!({"action": "refresh"}), "missing \"experiment_id\""),
            (json!({"action": "explode"}), "unknown action \"explode\""),
            (json!({"action": 7}), "\"action\" must be a string"),
            (json!({"experiment": 42}), "unexpected field \"experiment\""),
            (
                json!({"action": "migrate", "experiment_id": 1}),
                "unexpected field \"experiment_id\" for action \"migrate\"",
            ),
            (json!({}), "empty object"),
            (json!([1, 2]), "the payload is [1,2]"),
            (json!("refresh"), "the payload is \"refresh\""),
            (Value::Null, "the payload is null"),
        ];
        for (input, expected) in cases {
            let message = cmd(input.clone()).unwrap_err();
            assert!(message.contains(expected), "{input}: {message}");
        }
    }

    #[test]
    fn eventbridge_rule_and_scheduler_envelopes() {
        let rule = |detail: Value| {
            json!({"version": "0", "id": "x", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "1", "time": "2026-06-01T00:00:00Z", "region": "eu-west-1",
            "resources": [], "detail": detail})
        };
        assert_eq!(cmd(rule(json!({}))), Ok(Command::RefreshDue));
        assert_eq!(
            cmd(rule(json!({"experiment_id": 7}))),
            Ok(Command::Refresh { experiment_id: 7 })
        );
        assert_eq!(
            cmd(rule(json!({"action": "refresh_due"}))),
            Ok(Command::RefreshDue)
        );
        let mut scheduler = rule(json!("{\"experiment_id\": 8}"));
        scheduler["source"] = json!("aws.scheduler");
        assert_eq!(
            cmd(scheduler.clone()),
            Ok(Command::Refresh { experiment_id: 8 })
        );
        scheduler["detail"] = json!("{}");
        assert_eq!(cmd(scheduler.clone()), Ok(Command::RefreshDue));
        scheduler["detail"] = json!("");
        assert_eq!(cmd(scheduler.clone()), Ok(Command::RefreshDue));
        scheduler["detail"] = json!("{not json");
        assert!(cmd(scheduler).unwrap_err().contains("not JSON"));
        let message = cmd(rule(json!({"experiment_id": "x"}))).unwrap_err();
        assert!(
            message.contains("EventBridge \"detail\": \"experiment_id\" must be"),
            "{message}"
        );
        let mut other = rule(json!({}));
        other["source"] = json!("aws.s3");
        assert!(cmd(other).unwrap_err().contains("source \"aws.s3\""));
    }

    #[test]
    fn api_gateway_requests_are_recognised() {
        let v1 = json!({"resource": "/experiments/{id}/exposures", "path": "/experiments/7/exposures",
            "httpMethod": "GET", "pathParameters": {"id": "7"},
            "requestContext": {"httpMethod": "GET", "path": "/prod/experiments/7/exposures", "stage": "prod"}});
        let Ok(Invocation::Http(r)) = parse(&v1) else {
            panic!()
        };
        assert_eq!(
            (r.version, r.method.as_str(), r.id_param.as_deref()),
            (PayloadVersion::V1, "GET", Some("7"))
        );
        let v2 = json!({"version": "2.0", "routeKey": "$default", "rawPath": "/prod/experiments/7/exposures/refresh",
            "requestContext": {"http": {"method": "POST", "path": "/prod/experiments/7/exposures/refresh"}}});
        let Ok(Invocation::Http(r)) = parse(&v2) else {
            panic!()
        };
        assert_eq!(
            (r.version, r.method.as_str(), r.id_param),
            (PayloadVersion::V2, "POST", None)
        );
        assert_eq!(r.path, "/prod/experiments/7/exposures/refresh");
        let broken = json!({"httpMethod": 7, "path": "/x"});
        assert!(parse(&broken)
            .unwrap_err()
            .to_string()
            .contains("malformed API Gateway REST API (1.0) request"));
    }

    #[test]
    fn ids_from_paths() {
        assert_eq!(parse_id("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1e3",
            "abc",
            "99999999999999999999",
            " 1",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
