//! An instance kept registered while it serves.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::{Instance, Registry, RegistryError};

/// Keeps an instance registered: renewed every third of its lease on a thread of its own (with
/// its own small runtime, so that handlers keeping the service's runtime busy cannot starve
/// it), removed by [`Registration::stop`]. Dropped without `stop` (a crash), the record lasts
/// until its lease runs out.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<dyn Registry>,
    instance: Instance,
    stop: Option<mpsc::Sender<()>>,
    renewing: Option<std::thread::JoinHandle<()>>,
}

impl Registration {
    /// Registers `instance` with a lease of `ttl` and keeps renewing it.
    pub async fn start(
        registry: Arc<dyn Registry>,
        instance: Instance,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        registry.register(&instance, ttl).await?;
        let (stop, stopped) = mpsc::channel::<()>();
        let (r, i) = (registry.clone(), instance.clone());
        let every = (ttl / 3).max(Duration::from_millis(10));
        let renewing = std::thread::Builder::new()
            .name("switchyard-registration".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    tracing::error!(target: "switchyard", "no runtime to renew the registration with");
                    return;
                };
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if let Err(e) = runtime.block_on(r.renew(&i, ttl)) {
                        // Tried again at the next beat; the record lasts its lease meanwhile.
                        tracing::warn!(target: "switchyard", service = %i.service, id = %i.id, error = %e, "registration not renewed");
                    }
                }
            })
            .map_err(|e| RegistryError::Unavailable {
                url: registry.url(),
                source: Box::new(e),
            })?;
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
        if let Some(thread) = self.renewing.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
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
