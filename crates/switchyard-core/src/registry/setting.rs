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

/// `config` as a value of kind `T`, checked.
fn parse<T: Setting>(key: &str, config: &Config) -> Result<T, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidValue {
        key: key.to_string(),
        revision: config.revision,
        reason,
    };
    let value: T = serde_json::from_str(&config.value).map_err(|e| invalid(e.to_string()))?;
    value.check().map_err(invalid)?;
    Ok(value)
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
