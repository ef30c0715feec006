//! The scenarios as libraries, so the example binaries and the tests share them. Each
//! module registers its orchestrators, activities, entities and start endpoints at link
//! time; a binary only starts the host.

pub mod approval_workflow;
pub mod bank;
pub mod common;
pub mod counter;
pub mod durable_search;
pub mod expenses;
pub mod hello;
pub mod order_processing;
pub mod query_job;
pub mod speakers;
