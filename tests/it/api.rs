//! API Gateway (SPEC 5.3) through the handler, against the real servers.

use std::path::Path;

use chrono::TimeDelta;
use exposures::App;
use serde_json::{json, Value};

use crate::helpers::{exposure, ts, Options, TestEnv};

fn sample(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A REST API (1.0) request built from the sample in `events/`.
pub(crate) fn v1(method: &str, path: &str, id: Option<&str>) -> Value {
    let mut e = sample("api-v1-get-exposures.json");
    e["httpMethod"] = json!(method);
    e["requestContext"]["httpMethod"] = json!(method);
    e["path"] = json!(path);
    e["pathParameters"] = id.map_or(Value::Null, |id| json!({"id": id}));
    e
}

/// An HTTP API (2.0) request built from the sample in `events/`.
pub(crate) fn v2(method: &str, path: &str, id: Option<&str>) -> Value {
    let mut e = sample("api-v2-get-exposures.json");
    e["rawPath"] = json!(path);
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    match id {
        Some(id) => e["pathParameters"] = json!({"id": id}),
        None => {
            e.as_object_mut().unwrap().remove("pathParameters");
        }
    }
    e
}

pub(crate) struct Answer {
    pub status: u64,
    pub headers: Value,
    pub body: Value,
}

/// The raw proxy response to an API Gateway request.
pub(crate) async fn call_raw(app: &App, request: Value) -> Value {
    exposures::handler::handle(app, request, None)
        .await
        .expect("API requests always answer")
}

/// Calls the API and checks the answer against docs/openapi.json.
pub(crate) async fn call(app: &App, request: Value) -> Answer {
    let r = call_raw(app, request.clone()).await;
    crate::openapi::check(&request, &r);
    assert_eq!(r["headers"]["content-type"], "application/json", "{r}");
    assert_eq!(r["isBase64Encoded"], false, "{r}");
    Answer {
        status: r["statusCode"].as_u64().unwrap(),
        headers: r["headers"].clone(),
        body: serde_json::from_str(r["body"].as_str().expect("string body")).expect("JSON body"),
    }
}

fn assert_error(a: &Answer, status: u64, code: &str) {
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (status, Some(code)),
        "{}",
        a.body
    );
    assert!(
        a.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn get_reads_postgres_only() {
    // ClickHouse unreachable: any attempt to query it would fail the request.
    let env = TestEnv::with(Options {
        clickhouse_url: Some("http://127.0.0.1:1".into()),
        ..Options::default()
    })
    .await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let path = format!("/experiments/{id}/exposures");
    for request in [
        v1("GET", &path, Some(&id.to_string())),
        v2("GET", &path, None),
    ] {
        let a = call(&env.app, request).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, json!({"experiment_id": id, "exposures": null}));
    }
    let payload =
        json!({"excluded_identities": 0, "timeseries": {"granularity": "hour", "points": []}});
    env.app
        .store
        .store_payload(id, ts("2026-06-01T05:00:00Z"), &payload)
        .await
        .unwrap();
    // Read a day after as_of: 29 hours running with nobody counted, and stale.
    env.set_now(ts("2026-06-02T05:00:00Z"));
    let a = call(&env.app, v2("GET", &path, Some(&id.to_string()))).await;
    assert_eq!(
        a.body,
        json!({"experiment_id": id, "exposures": {"as_of": "2026-06-01T05:00:00Z", "last_error_at": null,
               "refresh_requested_at": null, "is_final": false, "payload": payload,
               "health": {
                   "sample_ratio": {"status": "skipped", "reason": "no_weights", "observed": {},
                                    "expected": null, "chi_squared": null, "degrees_of_freedom": null,
                                    "p_value": null, "unexpected_variants": [], "sequential": null},
                   "multiple_exposure": {"excluded_identities": 0, "share": 0.0, "warning": false},
                   "findings": [
                       {"code": "no_exposures", "severity": "error", "since": "2026-06-02T00:00:00Z",
                        "detail": "Running for 29 hours and no identity has been counted."},
                       {"code": "stale", "severity": "warning", "since": "2026-06-01T06:00:00Z",
                        "detail": "The snapshot is 86400 seconds old (limit 3600)."}]}}})
    );
}

#[tokio::test]
async fn post_refreshes_synchronously_in_both_payload_versions() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "0".into())],
        ..Options::default()
    })
    .await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    let path = format!("/experiments/{id}/exposures/refresh");

    env.set_now(ts("2026-06-01T02:00:00Z"));
    let a = call(&env.app, v1("POST", &path, Some(&id.to_string()))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["exposures"]["refresh_requested_at"],
        "2026-06-01T02:00:00Z"
    );
    assert_eq!(a.body["exposures"]["as_of"], "2026-06-01T02:00:00Z");
    assert_eq!(
        a.body["exposures"]["payload"]["timeseries"]["points"][0]["new_identities"],
        json!({"control": 1})
    );
    assert!(
        a.body.get("outcome").is_none(),
        "the API answers the snapshot object"
    );

    env.insert(&[exposure("u2", "variant_a", "2026-06-01T02:30:00Z")])
        .await;
    env.set_now(ts("2026-06-01T03:00:00Z"));
    let a = call(&env.app, v2("POST", &format!("/prod{path}"), None)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["exposures"]["payload"]["timeseries"]["points"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        env.stored(id).await["payload"],
        a.body["exposures"]["payload"]
    );
}

#[tokio::test]
async fn routing_with_proxy_paths_stage_and_base_path_prefixes() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let paths = [
        format!("/experiments/{id}/exposures"),
        format!("/prod/experiments/{id}/exposures"),
        format!("/analytics/v1/experiments/{id}/exposures/"),
    ];
    for path in &paths {
        for request in [v1("GET", path, None), v2("GET", path, None)] {
            let a = call(&env.app, request).await;
            assert_eq!(
                (a.status, &a.body["experiment_id"]),
                (200, &json!(id)),
                "{path}"
            );
        }
    }
    let mut proxy = v1("GET", &paths[0], None);
    proxy["resource"] = json!("/{proxy+}");
    proxy["pathParameters"] = json!({"proxy": paths[0].trim_start_matches('/')});
    assert_eq!(call(&env.app, proxy).await.status, 200);
}

#[tokio::test]
async fn client_errors() {
    let env = TestEnv::new().await;
    let not_started = env.experiment(None, None).await;
    let ended = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-02T00:00:00Z"))
        .await;
    env.app
        .store
        .store_payload(ended, ts("2026-06-02T00:00:00Z"), &json!({}))
        .await
        .unwrap();

    for bad in ["abc", "0", "-5", "99999999999999999999", "1.0"] {
        for request in [
            v1("GET", &format!("/experiments/{bad}/exposures"), Some(bad)),
            v2(
                "POST",
                &format!("/experiments/{bad}/exposures/refresh"),
                None,
            ),
        ] {
            assert_error(&call(&env.app, request).await, 400, "bad_request");
        }
    }
    assert_error(
        &call(&env.app, v2("GET", "/experiments/123456/exposures", None)).await,
        404,
        "not_found",
    );
    assert_error(
        &call(
            &env.app,
            v1("POST", "/experiments/123456/exposures/refresh", None),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &call(&env.app, v2("GET", "/experiments/1/summary", None)).await,
        404,
        "not_found",
    );
    assert_error(
        &call(&env.app, v1("GET", "/", None)).await,
        404,
        "not_found",
    );

    let a = call(
        &env.app,
        v2("DELETE", &format!("/experiments/{ended}/exposures"), None),
    )
    .await;
    assert_error(&a, 405, "method_not_allowed");
    assert_eq!(a.headers["allow"], "GET");
    let a = call(
        &env.app,
        v1(
            "GET",
            &format!("/experiments/{ended}/exposures/refresh"),
            None,
        ),
    )
    .await;
    assert_error(&a, 405, "method_not_allowed");
    assert_eq!(a.headers["allow"], "POST");

    let a = call(
        &env.app,
        v2(
            "POST",
            &format!("/experiments/{not_started}/exposures/refresh"),
            None,
        ),
    )
    .await;
    assert_error(&a, 409, "not_started");
    let a = call(
        &env.app,
        v1(
            "POST",
            &format!("/experiments/{ended}/exposures/refresh"),
            None,
        ),
    )
    .await;
    assert_error(&a, 409, "final");
    // None of these accepted a refresh request.
    assert_eq!(env.stored(not_started).await, Value::Null);
    assert_eq!(env.stored(ended).await["refresh_requested_at"], Value::Null);
}

#[tokio::test]
async fn allow_list_forbids_other_environments() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_API_ALLOWED_ENVIRONMENTS", "staging, prod".into())],
        ..Options::default()
    })
    .await;
    let allowed = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let other = env
        .experiment_for("internal", "checkout", Some("2026-06-01T00:00:00Z"), None)
        .await;
    assert_eq!(
        call(
            &env.app,
            v2("GET", &format!("/experiments/{allowed}/exposures"), None)
        )
        .await
        .status,
        200
    );
    assert_error(
        &call(
            &env.app,
            v2("GET", &format!("/experiments/{other}/exposures"), None),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &call(
            &env.app,
            v1(
                "POST",
                &format!("/experiments/{other}/exposures/refresh"),
                None,
            ),
        )
        .await,
        403,
        "forbidden",
    );
    // Direct invocations are not API callers: the allow-list does not apply.
    assert_eq!(
        env.invoke(json!({"experiment_id": other})).await.unwrap()["outcome"],
        "refreshed"
    );
}

#[tokio::test]
async fn throttle_retry_after_rounds_up_and_the_boundary_is_accepted() {
    let env = TestEnv::new().await; // default minimum interval: 300 s
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    let path = format!("/experiments/{id}/exposures/refresh");
    let t0 = ts("2026-06-01T02:00:00Z");

    env.set_now(t0);
    assert_eq!(call(&env.app, v2("POST", &path, None)).await.status, 200);

    env.set_now(t0 + TimeDelta::milliseconds(100_500));
    let a = call(&env.app, v2("POST", &path, None)).await;
    assert_error(&a, 429, "throttled");
    assert_eq!(a.headers["retry-after"], "200", "199.5 s rounds up");

    env.set_now(t0 + TimeDelta::milliseconds(299_999));
    let a = call(&env.app, v1("POST", &path, None)).await;
    assert_error(&a, 429, "throttled");
    assert_eq!(a.headers["retry-after"], "1");

    env.set_now(t0 + TimeDelta::seconds(300));
    let a = call(&env.app, v1("POST", &path, None)).await;
    assert_eq!(a.status, 200, "exactly at the interval: {}", a.body);
    assert_eq!(
        a.body["exposures"]["refresh_requested_at"],
        "2026-06-01T02:05:00Z"
    );

    // A refused request does not move the stamp; scheduled refreshes are not throttled.
    env.set_now(t0 + TimeDelta::seconds(301));
    assert_eq!(call(&env.app, v1("POST", &path, None)).await.status, 429);
    assert_eq!(
        env.invoke(json!({"experiment_id": id})).await.unwrap()["outcome"],
        "refreshed"
    );
    assert_eq!(
        env.stored(id).await["refresh_requested_at"],
        "2026-06-01T02:05:00+00:00"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_refresh_requests_accept_exactly_one() {
    let env = TestEnv::new().await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let path = format!("/experiments/{id}/exposures/refresh");
    let requests: Vec<Value> = (0..24)
        .map(|i| {
            if i % 2 == 0 {
                v1("POST", &path, None)
            } else {
                v2("POST", &path, None)
            }
        })
        .collect();
    let answers =
        futures_util::future::join_all(requests.into_iter().map(|r| call(&env.app, r))).await;
    let mut statuses: Vec<u64> = answers.iter().map(|a| a.status).collect();
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        23,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn warehouse_failure_is_502_stamped_and_keeps_the_payload() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "0".into())],
        ..Options::default()
    })
    .await;
    let id = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.insert(&[exposure("u1", "control", "2026-06-01T01:00:00Z")])
        .await;
    env.set_now(ts("2026-06-01T02:00:00Z"));
    let path = format!("/experiments/{id}/exposures/refresh");
    let good = call(&env.app, v2("POST", &path, None)).await;
    assert_eq!(good.status, 200);

    let offline = env.app_without_clickhouse();
    env.set_now(ts("2026-06-01T03:00:00Z"));
    let a = call(&offline, v2("POST", &path, None)).await;
    assert_error(&a, 502, "warehouse_error");
    let read = call(
        &offline,
        v2("GET", &format!("/experiments/{id}/exposures"), None),
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.body["exposures"]["payload"],
        good.body["exposures"]["payload"]
    );
    assert_eq!(read.body["exposures"]["as_of"], "2026-06-01T02:00:00Z");
    assert!(
        read.body["exposures"]["last_error_at"].is_string(),
        "{}",
        read.body
    );
}

#[tokio::test]
async fn database_unavailable_is_503() {
    let env = TestEnv::new().await;
    let app = env.app_without_postgres();
    for request in [
        v1("GET", "/experiments/1/exposures", None),
        v2("POST", "/experiments/1/exposures/refresh", None),
    ] {
        let a = call(&app, request).await;
        assert_error(&a, 503, "database_unavailable");
        assert!(!a.body.to_string().contains("hunter2"), "{}", a.body);
    }
}
