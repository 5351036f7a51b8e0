//! etcd for switchyard: a service registry with leases and pushed watches, and configuration
//! with compare-and-set (`etcd://HOST:PORT[/NS]`). Not for direct use; see the `switchyard`
//! crate's `registry::connect`.

mod gateway;
mod registry;

pub use registry::EtcdRegistry;
