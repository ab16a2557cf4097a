//! API Gateway routes and proxy responses (SPEC 5.3).
//!
//! Routing is a pure function of method and path, so it is unit-tested; the
//! answers are built with the `aws_lambda_events` response types of the
//! payload version the request came in.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::domain::snapshot::{is_final, SnapshotView};
use crate::error::Error;
use crate::intake::{self, HttpRequest, IntakeError, PayloadVersion};
use crate::service::App;

/// The routes the API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /experiments/{id}/exposures`
    Snapshot(i64),
    /// `POST /experiments/{id}/exposures/refresh`
    Refresh(i64),
}

/// Matches the end of the path, so any stage or base-path prefix
/// (`/prod/experiments/7/exposures`) routes the same. `pathParameters.id`, when
/// API Gateway captured it, wins over the path segment.
pub fn route(method: &str, path: &str, id_param: Option<&str>) -> Result<Route, Error> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (kind, id_segment, allow): (fn(i64) -> Route, _, _) = match segments.as_slice() {
        [.., "experiments", id, "exposures"] => (Route::Snapshot, *id, "GET"),
        [.., "experiments", id, "exposures", "refresh"] => (Route::Refresh, *id, "POST"),
        _ => return Err(Error::RouteNotFound(format!("{method} {path}"))),
    };
    if method != allow {
        return Err(Error::MethodNotAllowed {
            method: method.to_owned(),
            allow,
        });
    }
    let raw = id_param.unwrap_or(id_segment);
    let id = intake::parse_id(raw).ok_or_else(|| {
        Error::BadInput(IntakeError(format!(
            "experiment id must be a positive integer, got {raw:?}"
        )))
    })?;
    Ok(kind(id))
}

/// Answers an API Gateway request; every outcome, error or not, is a proxy response.
/// `deadline` bounds a refresh's retries (the invocation's, see [`App::refresh`]).
pub async fn respond(app: &App, request: &HttpRequest, deadline: Option<DateTime<Utc>>) -> Value {
    let result = match route(&request.method, &request.path, request.id_param.as_deref()) {
        Ok(Route::Snapshot(id)) => snapshot(app, id).await,
        Ok(Route::Refresh(id)) => refresh(app, id, deadline).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(view) => response(request.version, 200, &view, &[]),
        Err(error) => {
            if error.status() >= 500 {
                tracing::error!(method = %request.method, path = %request.path, error = %error, "request failed");
            } else {
                tracing::info!(method = %request.method, path = %request.path, status = error.status(), error = %error, "request refused");
            }
            error_response(request.version, &error)
        }
    }
}

/// `GET`: the stored snapshot, from PostgreSQL only.
async fn snapshot(app: &App, id: i64) -> Result<SnapshotView, Error> {
    let (experiment, stored) = app.load(id).await?;
    app.authorize(&experiment)?;
    Ok(app.view(&experiment, stored.as_ref()))
}

/// `POST`: checks, then claims the per-experiment slot (race-safe in one
/// statement), then refreshes synchronously.
async fn refresh(
    app: &App,
    id: i64,
    deadline: Option<DateTime<Utc>>,
) -> Result<SnapshotView, Error> {
    let (experiment, stored) = app.load(id).await?;
    app.authorize(&experiment)?;
    if experiment.started_at.is_none() {
        return Err(Error::NotStarted(id));
    }
    if stored.as_ref().is_some_and(|s| is_final(&experiment, s)) {
        return Err(Error::Final(id));
    }
    let interval = app.config.refresh_min_interval;
    if let Some(wait) = app
        .store
        .claim_refresh_request(id, app.now(), interval)
        .await?
    {
        return Err(Error::Throttled {
            experiment_id: id,
            interval_seconds: interval.as_secs(),
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        });
    }
    let (_, view) = app.refresh_loaded(&experiment, stored, deadline).await?;
    Ok(view)
}

fn error_response(version: PayloadVersion, error: &Error) -> Value {
    let body = json!({"error": error.code(), "detail": error.to_string()});
    let extra: Vec<(&'static str, String)> = match error {
        Error::MethodNotAllowed { allow, .. } => vec![("allow", (*allow).to_owned())],
        Error::Throttled { retry_after, .. } => vec![("retry-after", retry_after.to_string())],
        _ => vec![],
    };
    response(version, error.status(), &body, &extra)
}

fn response(
    version: PayloadVersion,
    status: u16,
    body: &impl serde::Serialize,
    extra: &[(&'static str, String)],
) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let body = Some(Body::Text(serde_json::to_string(body).unwrap_or_default()));
    let status_code = i64::from(status);
    let answer = match version {
        PayloadVersion::V1 => {
            let mut r = ApiGatewayProxyResponse::default();
            r.status_code = status_code;
            r.headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
        PayloadVersion::V2 => {
            let mut r = ApiGatewayV2httpResponse::default();
            r.status_code = status_code;
            r.headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
    };
    answer.unwrap_or_else(|_| json!({"statusCode": 500}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<Route, Error>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status(), e.code())
    }

    #[test]
    fn routes_with_and_without_prefixes_and_path_parameters() {
        assert_eq!(
            route("GET", "/experiments/7/exposures", None).unwrap(),
            Route::Snapshot(7)
        );
        assert_eq!(
            route("GET", "/prod/experiments/7/exposures", None).unwrap(),
            Route::Snapshot(7)
        );
        assert_eq!(
            route("GET", "/api/v1/experiments/7/exposures/", None).unwrap(),
            Route::Snapshot(7)
        );
        assert_eq!(
            route("POST", "/experiments/7/exposures/refresh", None).unwrap(),
            Route::Refresh(7)
        );
        assert_eq!(
            route("POST", "/stage/experiments/7/exposures/refresh", Some("7")).unwrap(),
            Route::Refresh(7)
        );
        assert_eq!(
            route("GET", "/experiments/{id}/exposures", Some("9")).unwrap(),
            Route::Snapshot(9)
        );
    }

    #[test]
    fn bad_ids_are_400() {
        for id in ["abc", "0", "-1", "99999999999999999999", "1.5", "%31"] {
            let path = format!("/experiments/{id}/exposures");
            assert_eq!(
                code(route("GET", &path, None)),
                (400, "bad_request"),
                "{id}"
            );
        }
        let e = route("GET", "/experiments/x/exposures", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: experiment id must be a positive integer, got \"x\""
        );
    }

    #[test]
    fn unknown_routes_are_404_and_wrong_methods_405() {
        for path in [
            "/",
            "/experiments",
            "/experiments/7",
            "/experiments/7/other",
            "/exposures/7",
            "/experiments/7/exposures/refresh/now",
        ] {
            assert_eq!(code(route("GET", path, None)), (404, "not_found"), "{path}");
        }
        assert_eq!(
            code(route("DELETE", "/experiments/7/exposures", None)),
            (405, "method_not_allowed")
        );
        assert_eq!(
            code(route("GET", "/experiments/7/exposures/refresh", None)),
            (405, "method_not_allowed")
        );
        assert_eq!(
            code(route("POST", "/experiments/7/exposures", None)),
            (405, "method_not_allowed")
        );
    }

    #[test]
    fn responses_follow_the_payload_version() {
        let e = Error::Throttled {
            experiment_id: 1,
            interval_seconds: 300,
            retry_after: 12,
        };
        let v1 = error_response(PayloadVersion::V1, &e);
        assert_eq!(v1["statusCode"], 429);
        assert_eq!(v1["headers"]["content-type"], "application/json");
        assert_eq!(v1["headers"]["retry-after"], "12");
        assert_eq!(v1["isBase64Encoded"], false);
        let body: Value = serde_json::from_str(v1["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"], "throttled");
        let v2 = error_response(
            PayloadVersion::V2,
            &Error::MethodNotAllowed {
                method: "PUT".into(),
                allow: "GET",
            },
        );
        assert_eq!(v2["statusCode"], 405);
        assert_eq!(v2["headers"]["allow"], "GET");
        assert_eq!(v2["cookies"], json!([]));
    }
}

/// Generated inputs: whatever shape arrives, parsing and routing answer without panicking.
#[cfg(test)]
mod generated_inputs {
    use super::*;
    use crate::intake::{parse, Invocation};
    use serde_json::json;

    const KEYS: &[&str] = &[
        "action",
        "experiment_id",
        "detail-type",
        "source",
        "detail",
        "httpMethod",
        "rawPath",
        "version",
        "requestContext",
        "http",
        "method",
        "path",
        "pathParameters",
        "id",
        "routeKey",
    ];
    const STRINGS: &[&str] = &[
        "",
        "2.0",
        "refresh",
        "refresh_due",
        "migrate",
        "aws.events",
        "aws.scheduler",
        "GET",
        "POST",
        "/experiments/7/exposures",
        "/experiments/7/exposures/refresh",
        "/experiments/-1/exposures",
        "{\"experiment_id\": 3}",
        "{",
        "ünï\u{0}",
        "99999999999999999999",
        "7",
    ];

    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn value(rng: &mut Rng, depth: usize) -> Value {
        match rng.next(if depth > 3 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(rng.next(2) == 0),
            2 => json!([0i64, 1, -1, 42, i64::MAX, i64::MIN][rng.next(6)]),
            3 => json!([1.5f64, -0.0, 1e300][rng.next(3)]),
            4 | 5 => json!(STRINGS[rng.next(STRINGS.len())]),
            6 => Value::Array((0..rng.next(3)).map(|_| value(rng, depth + 1)).collect()),
            _ => Value::Object(
                (0..rng.next(5))
                    .map(|_| (KEYS[rng.next(KEYS.len())].to_owned(), value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    /// Valid payloads of each kind, to mutate one field at a time.
    fn bases() -> Vec<Value> {
        vec![
            json!({"experiment_id": 7}),
            json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}),
            json!({"httpMethod": "GET", "path": "/experiments/7/exposures", "pathParameters": {"id": "7"},
                   "requestContext": {"httpMethod": "GET", "path": "/experiments/7/exposures"}}),
            json!({"version": "2.0", "rawPath": "/p/experiments/7/exposures/refresh",
                   "requestContext": {"http": {"method": "POST", "path": "/p/experiments/7/exposures/refresh"}}}),
        ]
    }

    fn mutated(rng: &mut Rng) -> Value {
        let bases = bases();
        let mut event = bases[rng.next(bases.len())].clone();
        let replacement = value(rng, 2);
        let key = KEYS[rng.next(KEYS.len())];
        match rng.next(3) {
            0 => event[key] = replacement,
            1 if event.get("requestContext").is_some() => {
                event["requestContext"][key] = replacement
            }
            _ => {
                if let Some(map) = event.as_object_mut() {
                    map.remove(key);
                }
            }
        }
        event
    }

    #[test]
    fn parse_and_route_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = [0usize; 3];
        for i in 0..20_000 {
            let event = if i % 2 == 0 {
                value(&mut rng, 0)
            } else {
                mutated(&mut rng)
            };
            match parse(&event) {
                Ok(Invocation::Command(_)) => seen[0] += 1,
                Ok(Invocation::Http(r)) => {
                    seen[1] += 1;
                    let _ = route(&r.method, &r.path, r.id_param.as_deref());
                }
                Err(e) => {
                    seen[2] += 1;
                    assert!(e.to_string().starts_with("invalid input: "), "{e}");
                }
            }
        }
        assert!(
            seen.iter().all(|n| *n > 0),
            "every branch exercised: {seen:?}"
        );
    }
}
