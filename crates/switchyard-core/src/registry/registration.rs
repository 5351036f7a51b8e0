//! An instance kept registered while it serves.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Health, Instance, Registry, RegistryError};

/// Keeps an instance registered: renewed every third of its lease by the process's renewer, a
/// thread of its own with its own small runtime, so that handlers keeping the service's runtime
/// busy cannot starve it (one thread for every registration of the process: a thousand
/// instances simulated in one test cost one thread, not a thousand). Removed by
/// [`Registration::stop`]; dropped without `stop` (a crash), the record lasts until its lease
/// runs out.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<dyn Registry>,
    instance: Instance,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

/// The runtime that renews every registration of this process, on a thread of its own.
fn renewer() -> Result<&'static tokio::runtime::Handle, std::io::Error> {
    static RENEWER: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    if let Some(handle) = RENEWER.get() {
        return Ok(handle);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    // Two callers racing here: the loser's runtime is dropped unused, its thread never made.
    if RENEWER.set(handle).is_ok() {
        std::thread::Builder::new()
            .name("switchyard-registration".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    }
    RENEWER
        .get()
        .ok_or_else(|| std::io::Error::other("no renewer runtime"))
}

impl Registration {
    /// Registers `instance` with a lease of `ttl` and keeps renewing it.
    pub async fn start(
        registry: Arc<dyn Registry>,
        instance: Instance,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let health = instance.health;
        Self::reporting(registry, instance, ttl, move || health).await
    }

    /// Registers `instance` with a lease of `ttl` and keeps renewing it, asking `health` at
    /// each renewal: when the answer changes, the record is written again with it (callers
    /// pass over an instance not ready while another serves).
    pub async fn reporting(
        registry: Arc<dyn Registry>,
        mut instance: Instance,
        ttl: Duration,
        health: impl Fn() -> Health + Send + Sync + 'static,
    ) -> Result<Self, RegistryError> {
        instance.health = health();
        let renewer = renewer().map_err(|e| RegistryError::Unavailable {
            url: registry.url(),
            source: Box::new(e),
        })?;
        // Registered from the renewer too: a connection the registry makes now is driven by
        // the renewer's runtime, not by the service's, which busy handlers may hold.
        let (r, i) = (registry.clone(), instance.clone());
        renewer
            .spawn(async move { r.register(&i, ttl).await })
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: registry.url(),
                source: Box::new(e),
            })??;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (r, mut i) = (registry.clone(), instance.clone());
        let every = (ttl / 3).max(Duration::from_millis(10));
        let renewing = renewer.spawn(async move {
            loop {
                tokio::select! {
                    // Stopped, or the registration dropped.
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = health();
                let renewed = if now == i.health {
                    r.renew(&i, ttl).await
                } else {
                    i.health = now;
                    r.register(&i, ttl).await
                };
                if let Err(e) = renewed {
                    // Tried again at the next beat; the record lasts its lease meanwhile.
                    tracing::warn!(target: "switchyard", service = %i.service, id = %i.id, error = %e, "registration not renewed");
                }
            }
        });
        Ok(Self {
            registry,
            instance,
            stop: Some(stop),
            renewing: Some(renewing),
        })
    }

    /// The instance registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Stops renewing and removes the record.
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        self.halt();
        // No renewal may land after the removal below.
        if let Some(renewing) = self.renewing.take() {
            let _ = renewing.await;
        }
        self.registry
            .deregister(&self.instance.service, &self.instance.id)
            .await
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.halt();
    }
}
