//! Typed configuration applied while running: a client's call policy taken from the
//! registry's configuration (`Client::policy_from`), each value checked before it replaces the
//! one in force, a value refused leaving the one in force.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_core::client::Client;
use switchyard_core::error::CallError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::policy::CallPolicy;
use switchyard_core::registry::{
    read_setting, MemoryRegistry, Registry, RegistryError, VersionRoute,
};
use switchyard_core::server;
use switchyard_core::service::Service;

/// Calls `/slow` (80 ms) until `timed_out` says what happened, within 3 s.
async fn until(client: &Client, timed_out: bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let outcome: Result<u32, CallError> = client.call("/slow", ()).await;
        let was = matches!(outcome, Err(CallError::Timeout { .. }));
        if was == timed_out {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "calls still {outcome:?} 3 s after the policy changed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_policy_follows_the_registry_and_a_bad_value_is_refused() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::named(&format!("settings{id}")));
    let bus = Arc::new(MemTransport::from_url(&format!("mem://settings{id}")).expect("mem"));
    let service = Service::new("books").route(
        "/slow",
        rpc(|| async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            7u32
        }),
    );
    let _served = server::serve(bus.clone(), service).await.expect("serve");
    let key = "policy/books";

    // Unset: the client's own policy.
    let client = Client::new(bus.clone())
        .service("books")
        .policy_from(registry.clone(), key)
        .await
        .expect("followed");
    assert_eq!(
        client.call::<_, u32>("/slow", ()).await.expect("answered"),
        7
    );

    // A 20 ms timeout for the route: calls time out once the change is read.
    let tight = r#"{"routes": {"/slow": {"timeout_ms": 20}}}"#;
    let revision = registry.config_set(key, tight, None).await.expect("set");
    until(&client, true).await;
    assert_eq!(
        client.call_policy().timeout("/slow"),
        Some(Duration::from_millis(20))
    );

    // Not a policy that can be applied: refused, the one in force kept.
    let bad = registry
        .config_set(key, r#"{"breaker_ratio": 3.0}"#, Some(revision))
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.call_policy().timeout("/slow"),
        Some(Duration::from_millis(20)),
        "the policy in force kept"
    );
    assert!(matches!(
        client.call::<_, u32>("/slow", ()).await,
        Err(CallError::Timeout { .. })
    ));
    // Nor can a new client start from it.
    let refused = Client::new(bus.clone())
        .service("books")
        .policy_from(registry.clone(), key)
        .await;
    assert!(
        matches!(&refused, Err(RegistryError::InvalidValue { reason, .. }) if reason.contains("breaker_ratio")),
        "{:?}",
        refused.map(|_| ())
    );

    // Back to the defaults: answered again.
    registry
        .config_set(key, "{}", Some(bad))
        .await
        .expect("set");
    until(&client, false).await;
    assert_eq!(client.call_policy(), CallPolicy::default());
}

#[tokio::test]
async fn a_setting_is_read_as_its_kind_and_checked() {
    let registry = MemoryRegistry::named("settings-read");
    assert_eq!(
        read_setting::<VersionRoute>(&registry, "route/x")
            .await
            .expect("read"),
        None
    );
    registry
        .config_set(
            "route/x",
            r#"{"split": [{"version": "^1", "weight": 0}]}"#,
            None,
        )
        .await
        .expect("set");
    let refused = read_setting::<VersionRoute>(&registry, "route/x").await;
    assert!(
        matches!(&refused, Err(RegistryError::InvalidValue { revision: 1, reason, .. }) if reason.contains("weight above 0")),
        "{refused:?}"
    );
}
