//! The examples are `[[example]]` targets of this package; it has no library code.
