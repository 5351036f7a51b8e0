//! The `yard` command's library side: seed 000's tutorial listener, shared by `yard serve
//! example`, `yard demo`, the examples and the tests.

pub mod tutorial;
