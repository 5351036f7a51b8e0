//! The `yard` command's library side: the services `yard serve` starts — the example listener
//! of microservices_connector's tutorial and the echo test service — shared by `yard demo` and
//! the tests.

pub mod echo;
pub mod tutorial;
