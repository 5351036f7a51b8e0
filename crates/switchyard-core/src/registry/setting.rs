//! Typed configuration: a value of a known kind read from its JSON and checked before anyone
//! applies it, as it is now and each time it changes. A value that cannot be applied is
//! refused with its reason, and whoever follows the key keeps the value in force.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::{Config, Registry, RegistryError};

/// A kind of configuration value: its JSON shape (serde) and what else it must satisfy.
pub trait Setting: DeserializeOwned + Send + 'static {
    /// Whether the value can be applied; why not. By default, any value of the shape can.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Setting for crate::policy::CallPolicy {
    fn check(&self) -> Result<(), String> {
        crate::policy::CallPolicy::check(self)
    }
}

impl Setting for super::VersionRoute {
    fn check(&self) -> Result<(), String> {
        super::VersionRoute::check(self)
    }
}

/// A setting as it changes: `Ok(Some)` a value checked, `Ok(None)` the key unset,
/// `Err(RegistryError::InvalidValue)` a value refused (the stream goes on), any other error
/// the registry failing (the stream ends).
pub type Settings<T> = BoxStream<'static, Result<Option<T>, RegistryError>>;

/// `value` (JSON) read as a `T` and checked: what is done before a value is applied, and
/// what a tool writing one can do before it writes (`yard config set`).
pub fn check_setting<T: Setting>(value: &str) -> Result<T, String> {
    let value: T = serde_json::from_str(value).map_err(|e| e.to_string())?;
    value.check()?;
    Ok(value)
}

/// `config` as a value of kind `T`, checked.
fn parse<T: Setting>(key: &str, config: &Config) -> Result<T, RegistryError> {
    check_setting(&config.value).map_err(|reason| RegistryError::InvalidValue {
        key: key.to_string(),
        revision: config.revision,
        reason,
    })
}

/// `key`'s value in `registry`, read as a `T` and checked (`None`: not set).
pub async fn read_setting<T: Setting>(
    registry: &dyn Registry,
    key: &str,
) -> Result<Option<T>, RegistryError> {
    match registry.config_get(key).await? {
        None => Ok(None),
        Some(config) => parse(key, &config).map(Some),
    }
}

/// `key`'s value in `registry` as a `T`, now and at each change ([`Settings`]).
pub async fn watch_setting<T: Setting>(
    registry: &Arc<dyn Registry>,
    key: &str,
) -> Result<Settings<T>, RegistryError> {
    let key = key.to_string();
    let values = registry.config_watch(&key).await?;
    Ok(values
        .map(move |value| match value {
            Ok(None) => Ok(None),
            Ok(Some(config)) => parse(&key, &config).map(Some),
            Err(e) => Err(e),
        })
        .boxed())
}

/// How long a follower waits before watching a key again after the registry failed.
const WATCH_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies `key`'s value in `registry` to `target` each time it changes, for as long as
/// `target` lives: `apply` gets each value checked, or `None` when the key is unset; a value
/// refused is logged and `apply` not called (the value in force is kept); after the registry
/// failed, the key is watched again a second later. `values` is a watch the caller already
/// made (and took values from), or `None` to start one here. What a Discovery's version
/// routes and a client's followed call policy both run on.
pub(crate) async fn follow_setting<T, W>(
    registry: Arc<dyn Registry>,
    key: String,
    mut values: Option<Settings<T>>,
    target: std::sync::Weak<W>,
    apply: impl Fn(&W, Option<T>) + Send + 'static,
) where
    T: Setting,
    W: Send + Sync + 'static,
{
    loop {
        if target.strong_count() == 0 {
            return;
        }
        let watching = match values.take() {
            Some(watching) => Ok(watching),
            None => watch_setting::<T>(&registry, &key).await,
        };
        match watching {
            Ok(mut watching) => {
                while let Some(value) = watching.next().await {
                    let Some(target) = target.upgrade() else {
                        return;
                    };
                    match value {
                        Ok(value) => apply(&target, value),
                        Err(e @ RegistryError::InvalidValue { .. }) => {
                            tracing::warn!(target: "switchyard", error = %e, "configuration refused: keeping the value in force");
                        }
                        Err(e) => {
                            tracing::warn!(target: "switchyard", %key, error = %e, "configuration not readable: keeping the value in force");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target: "switchyard", %key, error = %e, "configuration not readable: keeping the value in force");
            }
        }
        tokio::time::sleep(WATCH_AGAIN).await;
    }
}
