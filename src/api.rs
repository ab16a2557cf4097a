//! API Gateway routes and proxy responses (SPEC 5.3).

use serde_json::{json, Value};

use crate::intake::HttpRequest;
use crate::service::App;

/// Answers an API Gateway request with a proxy response.
pub async fn respond(_app: &App, request: &HttpRequest) -> Value {
    json!({"statusCode": 501, "headers": {"content-type": "application/json"},
           "body": json!({"error": "not_implemented", "detail": format!("{} {}", request.method, request.path)}).to_string()})
}
