//! `docs/openapi.json` against the function's real answers: every API answer of
//! the integration tests is validated against it (`check`), and one test makes
//! the real servers give every documented status, so the document can drift
//! from the code in neither direction.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::api::{call_raw, v1, v2};
use crate::helpers::{exposure, ts, Options, TestEnv};

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("openapi.json is JSON")
    })
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve(value: &Value) -> &Value {
    match value["$ref"].as_str() {
        Some(pointer) => document()
            .pointer(pointer.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("openapi.json: unresolved $ref {pointer}")),
        None => value,
    }
}

/// Validates `instance` against a schema of the document (its `$ref`s into
/// `#/components` resolve because the components travel with it).
fn validate(schema: &Value, instance: &Value, what: &str) {
    let mut root = schema.clone();
    root["components"] = document()["components"].clone();
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("openapi.json: schema of {what} does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the answer does not match openapi.json: {errors:#?}\n{instance:#}"
    );
}

/// Method and path of an API Gateway request (payload 1.0 or 2.0).
fn request_line(request: &Value) -> (String, String) {
    let method = request["httpMethod"]
        .as_str()
        .or(request["requestContext"]["http"]["method"].as_str())
        .expect("an API Gateway request");
    let path = request["rawPath"]
        .as_str()
        .or(request["path"].as_str())
        .expect("an API Gateway request");
    (method.to_owned(), path.to_owned())
}

/// The document's path template the request's path ends in.
fn template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., "experiments", _, "exposures"] => Some("/experiments/{id}/exposures"),
        [.., "experiments", _, "exposures", "refresh"] => {
            Some("/experiments/{id}/exposures/refresh")
        }
        _ => None,
    }
}

/// Which documented answer a real one is: (path template, method, status);
/// `*` stands for an unknown route or an undocumented method.
pub type Key = (String, String, String);

/// Checks a real proxy response to `request` against the document: its status
/// is documented for the route and method, every required header is there and
/// valid, and the body matches the schema. Returns which answer it was.
pub fn check(request: &Value, answer: &Value) -> Key {
    let (method, path) = request_line(request);
    let status = answer["statusCode"]
        .as_u64()
        .expect("statusCode")
        .to_string();
    let what = format!("{method} {path} -> {status}");
    let (key, response) = match template(&path) {
        None => {
            let other = &document()["x-unknown-route"];
            assert_eq!(other["status"], status.as_str(), "{what}");
            (("*".into(), "*".into(), status.clone()), &other["response"])
        }
        Some(template) => {
            let item = &document()["paths"][template];
            match item.get(method.to_lowercase()) {
                Some(operation) => {
                    let response = operation["responses"]
                        .get(&status)
                        .unwrap_or_else(|| panic!("{what}: status not in openapi.json"));
                    ((template.into(), method.clone(), status.clone()), response)
                }
                None => {
                    let other = &item["x-other-methods"];
                    assert_eq!(other["status"], status.as_str(), "{what}");
                    (
                        (template.into(), "*".into(), status.clone()),
                        &other["response"],
                    )
                }
            }
        }
    };
    let response = resolve(response);

    let headers = &answer["headers"];
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let header = resolve(header);
        let value = headers[name.to_lowercase()].as_str();
        if header["required"] == true {
            assert!(value.is_some(), "{what}: header {name} missing: {headers}");
        }
        if let Some(value) = value {
            let schema = &header["schema"];
            let instance = if schema["type"] == "integer" {
                serde_json::from_str(value).unwrap_or(json!(value))
            } else {
                json!(value)
            };
            validate(schema, &instance, &format!("{what}: header {name}"));
        }
    }
    let content = response["content"].as_object().expect("documented content");
    let content_type = headers["content-type"].as_str().expect("content-type");
    let media = content
        .get(content_type)
        .unwrap_or_else(|| panic!("{what}: content-type {content_type} not documented"));
    let body: Value =
        serde_json::from_str(answer["body"].as_str().expect("string body")).expect("JSON body");
    validate(&media["schema"], &body, &what);
    key
}

/// Every answer the document describes.
fn documented() -> BTreeSet<Key> {
    let mut keys = BTreeSet::from([(
        "*".to_owned(),
        "*".to_owned(),
        document()["x-unknown-route"]["status"]
            .as_str()
            .unwrap()
            .to_owned(),
    )]);
    for (template, item) in document()["paths"].as_object().unwrap() {
        let other = item["x-other-methods"]["status"]
            .as_str()
            .expect("x-other-methods");
        keys.insert((template.clone(), "*".into(), other.into()));
        for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
            for status in item[method]["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|r| r.0)
            {
                keys.insert((template.clone(), method.to_uppercase(), status.clone()));
            }
        }
    }
    keys
}

/// The document against the OpenAPI 3.1 specification's own schema
/// (openapi-spec-validator, installed by scripts/tools.sh).
#[test]
fn openapi_spec_validator_accepts_the_document() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let out = std::process::Command::new("openapi-spec-validator")
        .args(["--schema", "3.1", path])
        .output()
        .expect("openapi-spec-validator is installed (scripts/tools.sh)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_document_is_openapi_3_1_and_its_schemas_compile() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        let schema = json!({"$ref": format!("#/components/schemas/{name}")});
        let mut root = schema;
        root["components"] = doc["components"].clone();
        jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The 429 and 405 answers name their headers.
    let refresh = &doc["paths"]["/experiments/{id}/exposures/refresh"];
    assert_eq!(
        refresh["post"]["responses"]["429"]["headers"]["Retry-After"]["required"],
        true
    );
    assert_eq!(
        resolve(&refresh["x-other-methods"]["response"])["headers"]["Allow"]["required"],
        true
    );
}

/// Drives the real servers into every status the document lists, on both
/// payload versions, and validates each answer.
#[tokio::test]
async fn every_documented_answer_is_a_real_one() {
    let env = TestEnv::with(Options {
        settings: vec![("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "300".into())],
        ..Options::default()
    })
    .await;
    env.set_now(ts("2026-06-02T00:00:00Z"));
    let running = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;
    env.pg
        .execute(
            "UPDATE experiments SET variant_weights = '{\"control\": 1, \"variant_a\": 1}' WHERE id = $1",
            &[&running],
        )
        .await
        .unwrap();
    let events: Vec<_> = (0..120)
        .map(|i| {
            let variant = if i % 2 == 0 { "control" } else { "variant_a" };
            exposure(&format!("u{i}"), variant, "2026-06-01T10:00:00Z")
        })
        .collect();
    env.insert(&events).await;
    let created = env.experiment(None, None).await;
    let ended = env
        .experiment(Some("2026-06-01T00:00:00Z"), Some("2026-06-01T12:00:00Z"))
        .await;
    env.invoke(json!({"experiment_id": ended})).await.unwrap();
    let failing = env.experiment(Some("2026-06-01T00:00:00Z"), None).await;

    let read = |id: i64| format!("/experiments/{id}/exposures");
    let refresh = |id: i64| format!("/experiments/{id}/exposures/refresh");
    let forbidding = env.another_app(&[("EXPOSURES_API_ALLOWED_ENVIRONMENTS", "staging")]);
    let no_clickhouse = env.app_without_clickhouse();
    let no_postgres = env.app_without_postgres();

    let mut seen = BTreeSet::new();
    for build in [v1 as fn(&str, &str, Option<&str>) -> Value, v2] {
        let requests = [
            (&env.app, build("GET", &read(created), None)),
            (&env.app, build("POST", &refresh(running), None)),
            (&env.app, build("GET", &read(running), None)),
            (&env.app, build("POST", &refresh(running), None)),
            (&env.app, build("GET", "/experiments/abc/exposures", None)),
            (
                &env.app,
                build("POST", "/experiments/0/exposures/refresh", None),
            ),
            (&env.app, build("GET", &read(999_999), None)),
            (&env.app, build("POST", &refresh(999_999), None)),
            (&env.app, build("GET", "/experiments", None)),
            (&env.app, build("DELETE", &read(running), None)),
            (&env.app, build("GET", &refresh(running), None)),
            (&env.app, build("POST", &refresh(created), None)),
            (&env.app, build("POST", &refresh(ended), None)),
            (&forbidding, build("GET", &read(running), None)),
            (&forbidding, build("POST", &refresh(running), None)),
            (&no_clickhouse, build("POST", &refresh(failing), None)),
            (&env.app, build("GET", &read(failing), None)),
            (&no_postgres, build("GET", &read(running), None)),
            (&no_postgres, build("POST", &refresh(running), None)),
        ];
        for (app, request) in requests {
            let answer = call_raw(app, request.clone()).await;
            seen.insert(check(&request, &answer));
        }
        // The second round's refreshes must be accepted again.
        env.set_now(ts("2026-06-02T01:00:00Z"));
    }
    let missing: Vec<_> = documented().difference(&seen).cloned().collect();
    assert!(
        missing.is_empty(),
        "documented but never answered: {missing:?}"
    );

    // The health of the first refresh, as validated above, is a computed test.
    let body = crate::api::call(&env.app, v2("GET", &read(running), None))
        .await
        .body;
    assert_eq!(
        body["exposures"]["health"]["sample_ratio"]["status"], "ok",
        "{body}"
    );
}
