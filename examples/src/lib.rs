//! Examples of embedding the overlay crates: see the `examples/` targets of
//! this package.
