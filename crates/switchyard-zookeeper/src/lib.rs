//! ZooKeeper for switchyard: a service registry on ephemeral nodes with persistent watches, and
//! configuration with versioned compare-and-set (`zk://HOST:PORT[/NS]`). Not for direct use;
//! see the `switchyard` crate's `registry::connect`.

mod registry;

pub use registry::ZkRegistry;
