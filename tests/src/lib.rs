//! Shared support for the cross-crate tests (the tests live in `tests/tests/`).

pub mod layers;
