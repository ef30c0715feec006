//! Payload limits, checked once in the engine (client and worker) before anything reaches a
//! store: in go a payload or an episode's commit and the limit, out comes
//! [`PayloadTooLarge`] naming what was too big.

use crate::history::{EntityRequest, EventKind, HistoryEvent};
use crate::store::OrchestrationCommit;

/// The default limit on one payload (input, output, event data, custom status): 16 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// A payload over the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadTooLarge {
    /// What the payload is (e.g. "input of instance 'abc'").
    pub what: String,
    /// Its size in bytes.
    pub size: usize,
    /// The limit in bytes.
    pub limit: usize,
}

impl std::fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} bytes, over the limit of {} bytes",
            self.what, self.size, self.limit
        )
    }
}

impl std::error::Error for PayloadTooLarge {}

/// Fails when `payload` is over `limit` bytes.
pub fn check_payload(
    what: impl FnOnce() -> String,
    payload: Option<&str>,
    limit: usize,
) -> Result<(), PayloadTooLarge> {
    match payload {
        Some(p) if p.len() > limit => Err(PayloadTooLarge {
            what: what(),
            size: p.len(),
            limit,
        }),
        _ => Ok(()),
    }
}

/// Checks the payload an event carries (a message to an instance).
pub fn check_event(
    what: impl FnOnce() -> String,
    event: &HistoryEvent,
    limit: usize,
) -> Result<(), PayloadTooLarge> {
    check_payload(what, event_payload(event), limit)
}

/// Checks every payload an episode's commit would store.
pub fn check_commit(commit: &OrchestrationCommit, limit: usize) -> Result<(), PayloadTooLarge> {
    let id = &commit.instance_id;
    if let Some(state) = &commit.state {
        check_payload(
            || format!("output of instance '{id}'"),
            state.output.as_deref(),
            limit,
        )?;
        check_payload(
            || format!("custom status of instance '{id}'"),
            state.custom_status.as_deref(),
            limit,
        )?;
    }
    for a in &commit.activities {
        check_payload(
            || format!("input of activity '{}' in instance '{id}'", a.name),
            a.input.as_deref(),
            limit,
        )?;
    }
    for m in &commit.messages {
        check_event(
            || format!("message to instance '{}'", m.instance_id),
            &m.event,
            limit,
        )?;
    }
    for c in &commit.new_instances {
        check_payload(
            || format!("input of sub-orchestration '{}'", c.instance_id),
            c.input.as_deref(),
            limit,
        )?;
    }
    Ok(())
}

/// The JSON payload an event carries, if any.
pub fn event_payload(event: &HistoryEvent) -> Option<&str> {
    match &event.kind {
        EventKind::ExecutionStarted { input, .. }
        | EventKind::TaskScheduled { input, .. }
        | EventKind::EventRaised { input, .. }
        | EventKind::EventSent { input, .. }
        | EventKind::ContinueAsNew { input }
        | EventKind::SubOrchestrationInstanceCreated { input, .. } => input.as_deref(),
        EventKind::EntityOperationCalled { input, .. }
        | EventKind::EntityOperationSignaled { input, .. } => input.as_deref(),
        EventKind::EntityRequest {
            request: EntityRequest::Operation { input, .. },
        } => input.as_deref(),
        EventKind::EntityOperationCompleted { result, .. }
        | EventKind::TaskCompleted { result, .. }
        | EventKind::SubOrchestrationInstanceCompleted { result, .. }
        | EventKind::ExecutionCompleted { result, .. } => result.as_deref(),
        _ => None,
    }
}
