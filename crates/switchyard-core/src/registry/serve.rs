//! Serving a service registered in a registry, with its dependencies waited for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Health, Instance, Registration, Registry, RegistryError};
use crate::error::TransportError;
use crate::service::Service;
use crate::transport::{ServeHandle, Transport};

/// How often a missing hard dependency is looked for.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How long a deregistered instance keeps serving before it stops: a few of the watches'
/// looks, so that no caller still picks it when it stops taking calls.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A service served and registered ([`serve`]).
#[derive(Debug)]
pub struct Registered {
    // Taken by `shutdown`.
    handle: Option<ServeHandle>,
    url: String,
    registration: Arc<Mutex<Option<Registration>>>,
    waiting: tokio::task::JoinHandle<()>,
}

impl Drop for Registered {
    /// Dropped without [`Registered::shutdown`]: no longer waits to register. A registration
    /// made stops being renewed (its record goes when its lease runs out), and the service
    /// stops as a dropped `ServeHandle` does.
    fn drop(&mut self) {
        self.waiting.abort();
    }
}

impl Registered {
    /// Where the service is reached.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether it is registered yet (its hard dependencies were found).
    pub fn is_registered(&self) -> bool {
        self.registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Removes its record first, keeps serving for [`DRAIN_GRACE`] while callers learn it
    /// is gone (a watch looks every [`POLL_EVERY`](super::POLL_EVERY)), then stops taking
    /// work and finishes what is in flight: a rolling restart fails no call.
    pub async fn shutdown(mut self) -> Result<(), RegistryError> {
        self.waiting.abort();
        let registration = self
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let removed = match registration {
            Some(r) => {
                let removed = r.stop().await;
                tokio::time::sleep(DRAIN_GRACE).await;
                removed
            }
            None => Ok(()),
        };
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
        removed
    }
}

/// Serves `service` on `transport` ([`server::serve`](crate::server::serve)), then registers
/// it in `registry` (lease `ttl`) once each of its hard dependencies
/// ([`Service::depends_on`]) has an instance there; meanwhile the process is not ready
/// (`observe::not_ready`, `/readyz` 503, naming what it waits for). A soft dependency
/// ([`Service::soft_depends_on`]) missing at start is logged.
pub async fn serve(
    transport: Arc<dyn Transport>,
    service: Service,
    registry: Arc<dyn Registry>,
    ttl: Duration,
) -> Result<Registered, TransportError> {
    let mut instance = Instance::new(service.name(), crate::message::new_id(), Vec::new());
    instance.version = service.service_version().map(str::to_string);
    instance.routes = service
        .route_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    instance.topics = service.topics().into_iter().map(str::to_string).collect();
    let dependencies = service.dependencies().to_vec();
    let handle = crate::server::serve(transport, service).await?;
    instance.addresses = vec![handle.url().to_string()];
    let found = |r: &Result<Vec<Instance>, RegistryError>| r.as_ref().is_ok_and(|l| !l.is_empty());
    let mut missing = Vec::new();
    for (dependency, hard) in &dependencies {
        if found(&registry.list(Some(dependency)).await) {
            continue;
        }
        if *hard {
            missing.push(dependency.clone());
        } else {
            tracing::warn!(target: "switchyard", service = %instance.service, %dependency, "soft dependency not found: running without it");
        }
    }
    let registration: Arc<Mutex<Option<Registration>>> = Arc::default();
    // Everything it needs is there: registered before this returns.
    if missing.is_empty() {
        if let Ok(r) =
            Registration::reporting(registry.clone(), instance.clone(), ttl, Health::of_process)
                .await
        {
            *registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
    }
    // Not ready from now on, for each hard dependency missing, until it is found.
    let missing: Vec<(String, crate::observe::Waiting)> = missing
        .into_iter()
        .map(|dependency| {
            let why = format!(
                "hard dependency {dependency} of {} not discoverable in {}",
                instance.service,
                registry.url()
            );
            (dependency, crate::observe::waiting(why))
        })
        .collect();
    let slot = registration.clone();
    let waiting = tokio::spawn(async move {
        if slot.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        for (dependency, not_ready) in missing {
            while !found(&registry.list(Some(&dependency)).await) {
                tokio::time::sleep(LOOK_EVERY).await;
            }
            drop(not_ready);
        }
        loop {
            match Registration::reporting(
                registry.clone(),
                instance.clone(),
                ttl,
                Health::of_process,
            )
            .await
            {
                Ok(r) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    return;
                }
                Err(e) => {
                    let _not_ready = crate::observe::waiting(format!("not registered: {e}"));
                    tracing::warn!(target: "switchyard", service = %instance.service, error = %e, "not registered yet; trying again");
                    tokio::time::sleep(LOOK_EVERY * 5).await;
                }
            }
        }
    });
    Ok(Registered {
        url: handle.url().to_string(),
        handle: Some(handle),
        registration,
        waiting,
    })
}
