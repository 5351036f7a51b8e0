//! The listener of microservices_connector's tutorial, route for route: the same arguments give the same results.

use serde::Serialize;
use serde_json::{json, Map, Value};
use switchyard::{json, rpc, HandlerError, Json, Service};

/// The token of the three class routes.
pub const CLASS_TOKEN: &str = "123456";

/// microservices_connector's `testservice` object, as its listener returns it (fields in the order the
/// Python client prints them).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TestService {
    /// Always `"For test only"`.
    #[serde(rename = "Purpose")]
    pub purpose: String,
    /// Always `null`.
    pub empty: Option<Value>,
    /// Always `"test"`.
    pub name: String,
    /// What it was built from.
    pub value: Value,
}

impl TestService {
    /// `testservice(value)`.
    pub fn new(value: Value) -> Self {
        Self {
            purpose: "For test only".into(),
            empty: None,
            name: "test".into(),
            value,
        }
    }
}

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}
async fn string1(a: String, key: String) -> String {
    format!("{a}-{key}")
}
async fn string2(a: String, key: String) -> (String, String, String) {
    let joined = format!("{a}-{key}");
    (a, key, joined)
}
// Python's integers never overflow and its floats print `inf`: where a 64-bit result cannot
// say what Python would, the call fails with a 400 naming why, instead of a wrapped number or
// a `null`.
fn overflow(what: &str) -> HandlerError {
    HandlerError::bad_request(format!("{what} overflows a 64-bit integer"))
}
fn finite(x: f64, what: &str) -> Result<f64, HandlerError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(HandlerError::bad_request(format!(
            "{what} is not a finite number (JSON cannot carry it)"
        )))
    }
}
async fn int1(a: i64, key: i64) -> Result<i64, HandlerError> {
    a.checked_add(key).ok_or_else(|| overflow("a + key"))
}
async fn float2(a: f64, key: f64) -> Result<f64, HandlerError> {
    finite(a + key, "a + key")
}
async fn int3(a: f64, key: i64) -> Result<(f64, i64, f64), HandlerError> {
    let square = key.checked_mul(key).ok_or_else(|| overflow("key * key"))?;
    Ok((
        finite(a + key as f64, "a + key")?,
        square,
        finite(a * a, "a * a")?,
    ))
}
async fn list1(mut a: Vec<Value>, key: Vec<Value>) -> Vec<Value> {
    a.extend(key);
    a
}
async fn dict1(a: Value, mut key: Map<String, Value>) -> Map<String, Value> {
    key.insert("dict".into(), a);
    key
}
async fn list3(a: Value, mut key: Vec<Value>) -> (Value, Vec<Value>, Option<Value>) {
    key.push(json!("other value"));
    (a, key, None)
}
async fn none_value(_a: Value, mut key: Vec<Value>) {
    key.push(json!("Do something in the server"));
}
async fn class1(a: Value, _key: Value) -> Json<TestService> {
    Json(TestService::new(a))
}
async fn class2(a: Value, key: Value) -> (TestService, Value, Option<Value>) {
    (TestService::new(key), a, None)
}
async fn class3(a: Value, key: Value) -> (TestService, TestService, Vec<TestService>) {
    let x = TestService::new(key);
    let y = TestService::new(a);
    let z = vec![y.clone(), x.clone()];
    (x, y, z)
}

/// Keyword arguments of `/json`, with the original's defaults.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonArgs {
    #[serde(default = "one")]
    a: Value,
    #[serde(default = "string")]
    b: Value,
    #[serde(default)]
    c: Value,
}
fn one() -> Value {
    json!(1)
}
fn string() -> Value {
    json!("string")
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Json1Args {
    #[serde(default)]
    a: Value,
}

/// The tutorial listener: every route of microservices_connector's README, plus its WebSocket route `/hello`,
/// a parameterized `/user/<name>`, and a push stream at `/events/<topic>`.
pub fn service() -> Service {
    Service::new("example")
        .route("/helloworld", rpc(helloworld).params(["name"]))
        .route("/str", rpc(string1).params(["a", "key"]))
        .route("/str2", rpc(string2).params(["a", "key"]))
        .route("/int", rpc(int1).params(["a", "key"]))
        .route("/float", rpc(float2).params(["a", "key"]))
        .route("/int3", rpc(int3).params(["a", "key"]))
        .route("/list", rpc(list1).params(["a", "key"]))
        .route("/dict", rpc(dict1).params(["a", "key"]))
        .route("/list3", rpc(list3).params(["a", "key"]))
        .route("/None", rpc(none_value).params(["a", "key"]))
        .route(
            "/class",
            rpc(class1).params(["a", "key"]).token(CLASS_TOKEN),
        )
        .route(
            "/class2",
            rpc(class2).params(["a", "key"]).token(CLASS_TOKEN),
        )
        .route(
            "/class3",
            rpc(class3).params(["a", "key"]).token(CLASS_TOKEN),
        )
        .route(
            "/json",
            json(|k: JsonArgs| async move { json!({"1": k.a, "2": k.b, "3": k.c}) }),
        )
        .route("/json1", json(|k: Json1Args| async move { k.a }))
        .ws("/hello", |m: switchyard::service::WsMessage| async move {
            format!("ok:{}", m.text)
        })
        .ws(
            "/user/<name>",
            |m: switchyard::service::WsMessage| async move {
                let name = m.params.get("name").cloned().unwrap_or_default();
                format!("{name}: {}", m.text)
            },
        )
        .ws_events("/events/<topic>", None)
}
