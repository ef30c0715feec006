//! # durable-core
//!
//! Durable functions for Rust: orchestrations written as plain `async fn`s that survive
//! crashes and restarts, activities that do the side-effecting work, and a client to start
//! and manage instances. The semantics are those of Azure Durable Functions and the
//! Durable Task Framework: event-sourced histories and deterministic replay.
//!
//! ```
//! use durable_core::{activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError};
//!
//! #[activity]
//! async fn say_hello(city: String) -> Result<String, ActivityError> {
//!     Ok(format!("Hello {city}!"))
//! }
//!
//! #[orchestrator]
//! async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
//!     let mut out = Vec::new();
//!     for city in cities {
//!         out.push(ctx.call_activity(say_hello, city).await?);
//!     }
//!     Ok(out)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A worker and a client on the in-memory store (SQLite: `store::sqlite::SqliteStore`).
//! let worker = durable_core::Worker::builder(std::sync::Arc::new(durable_core::MemoryStore::new())).start()?;
//! let id = worker.client().start(hello_cities, vec!["Oslo".into()]).await?;
//! let out: Vec<String> = worker.client().wait_for_output(&id, std::time::Duration::from_secs(5)).await?;
//! assert_eq!(out, ["Hello Oslo!"]);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! Modules, one per concept: [`history`] (events), [`instance`] (status and state),
//! [`context`] (the orchestration API), [`activity`](mod@activity), [`payload`] (how JSON
//! becomes user types), [`registry`], [`worker`] (dispatches episodes and activities),
//! [`client`], [`limits`] (payload limits), [`store`] (the persistence seam and its
//! providers).

#![warn(missing_docs)]

pub mod activity;
pub mod client;
pub mod context;
pub mod entity;
pub mod error;
pub mod function;
pub mod history;
pub mod http;
pub mod instance;
pub mod join;
pub mod limits;
pub mod metrics;
pub mod payload;
pub mod registry;
mod replay;
pub mod replayer;
pub mod retry;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod typed_entity;
pub mod worker;

pub use activity::ActivityContext;
pub use client::{DurableClient, OrchestrationStatus, StartOptions, StatusOptions};
pub use context::{
    ActivityOptions, CriticalSection, DurableFuture, EventFuture, LockFuture, OrchestrationContext,
    ParentClosePolicy, SubOrchestrationOptions, TimerTarget,
};
pub use durable_macros::{activity, entity, orchestrator};
pub use entity::{EntityContext, EntityId, EntityMetadata, Operation};
pub use error::{ActivityError, Error, OrchestrationError, TaskError, TaskKind};
pub use history::{EventKind, FailureDetails, HistoryEvent};
pub use http::{DurableHttpRequest, DurableHttpResponse};
pub use instance::{InstanceFilter, InstanceState, Page, RuntimeStatus};
pub use join::{race, when_all, when_any, Either};
pub use registry::{Activity, Orchestrator, Registry};
pub use retry::RetryPolicy;
pub use store::memory::MemoryStore;
pub use store::{Store, WorkerId};
pub use typed_entity::{Entity, EntityHandle};
pub use worker::{Worker, WorkerBuilder, WorkerOptions};

/// Items used by code the attribute macros generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::activity::ActivityContext;
    pub use crate::client::DurableClient;
    pub use crate::context::DurableFuture;
    pub use crate::context::OrchestrationContext;
    pub use crate::entity::{EntityContext, EntityId, Operation};
    pub use crate::error::{Error, TaskError};
    pub use crate::function::Checked;
    pub use crate::history::FailureDetails;
    pub use crate::payload::{
        decode_activity_input, decode_input, decode_orchestrator_input, InputType,
    };
    pub use crate::registry::{encode, failure_of};
    pub use crate::registry::{
        Activity, ActivityRegistration, BoxFuture, EntityRegistration, OperationType, Orchestrator,
        OrchestratorRegistration, Outcome, Payload, Plain, TaskOutcome,
    };
    pub use crate::typed_entity::Entity;
    pub use inventory;
    pub use serde;
    pub use serde_json;

    /// Prints a macro expansion when `DURABLE_MACROS_DEBUG` is set (used by tests).
    pub const DEBUG_ENV: &str = "DURABLE_MACROS_DEBUG";
}
