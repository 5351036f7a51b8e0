//! The benchmarks are `[[bench]]` targets of this package; it has no library code.
