//! `yard serve echo`: a test service under any name and version, to start two services (or
//! two versions of one) from a shell on any transport and see which one answers.

use std::time::Duration;

use serde_json::{json, Map, Value};
use switchyard::handler::{rpc, untyped};
use switchyard::{HandlerError, Service};

/// The echo service named `name` (reporting `version`): `/whoami` answers
/// `{"service", "version", "instance"}`, `/echo` returns its arguments, and `/sleep MS`
/// answers after MS milliseconds.
pub fn service(name: &str, version: Option<&str>) -> Service {
    let instance = switchyard::message::new_id();
    let whoami = json!({"service": name, "version": version, "instance": instance});
    let service = Service::new(name)
        .route(
            "/whoami",
            rpc(move || {
                let whoami = whoami.clone();
                async move { whoami }
            }),
        )
        .route(
            "/echo",
            untyped(|args: Vec<Value>, kwargs: Map<String, Value>| async move {
                match (args.len(), kwargs.is_empty()) {
                    (1, true) => args.into_iter().next().unwrap_or(Value::Null),
                    (_, true) => Value::Array(args),
                    _ => json!({"args": args, "kwargs": kwargs}),
                }
            }),
        )
        .route(
            "/sleep",
            rpc(|ms: u64| async move {
                // Bounded, so that a typo cannot park a call for days.
                if ms > 600_000 {
                    return Err(HandlerError::bad_request("sleep at most 600000 ms"));
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ms)
            }),
        );
    match version {
        Some(v) => service.version(v),
        None => service,
    }
}
