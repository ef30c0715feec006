//! Error types: what activities and orchestrators return, what a failed durable call
//! yields inside an orchestration, and what the client reports.

use std::fmt;

use crate::history::FailureDetails;
use crate::instance::RuntimeStatus;
use crate::limits::PayloadTooLarge;
use crate::store::{StoreError, StoreErrorKind};

/// An activity's error. Any `std::error::Error`, `String` or `&str` converts into it with
/// `?` (`Err(format!("order {id} not found"))?`); plain messages also with
/// [`ActivityError::new`]. Mark failures that must not be retried with
/// [`ActivityError::non_retriable`].
pub struct ActivityError {
    details: FailureDetails,
}

impl ActivityError {
    /// An error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            details: FailureDetails::new("ActivityError", message.to_string()),
        }
    }

    /// An error that retry policies never retry.
    pub fn non_retriable(message: impl fmt::Display) -> Self {
        let mut e = Self::new(message);
        e.details.non_retriable = true;
        e
    }

    /// The failure details recorded in history.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }

    /// The failure details.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }
}

/// Any error, and plain messages (`String`, `&str`): `Err(format!("..."))?` and
/// `ActivityError::from("...")` work as `?` on an error does. An error keeps its type's
/// name as the failure's error type and its source as the details; a message is an
/// `ActivityError`.
impl<E> From<E> for ActivityError
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn from(e: E) -> Self {
        let name = short_type_name::<E>();
        let error_type = match name.as_str() {
            "String" | "&str" | "Cow" | "Box" => "ActivityError".to_string(),
            _ => name,
        };
        let e = e.into();
        let mut details = FailureDetails::new(error_type, e.to_string());
        if let Some(src) = e.source() {
            details.details = Some(src.to_string());
        }
        Self { details }
    }
}

impl fmt::Display for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.details.message)
    }
}

impl fmt::Debug for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.details, f)
    }
}

/// An orchestrator's error. Failed durable calls ([`TaskError`]) and any
/// `std::error::Error` convert into it with `?`.
pub struct OrchestrationError {
    details: FailureDetails,
}

impl OrchestrationError {
    /// An error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            details: FailureDetails::new("OrchestrationError", message.to_string()),
        }
    }

    /// The failure details recorded as the instance's failure.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }

    /// The failure details.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for OrchestrationError {
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        if let Some(task) = any.downcast_ref::<TaskError>() {
            return Self {
                details: FailureDetails {
                    error_type: "TaskFailed".into(),
                    message: task.to_string(),
                    details: task.failure.details.clone(),
                    non_retriable: task.failure.non_retriable,
                },
            };
        }
        Self {
            details: FailureDetails::new(short_type_name::<E>(), e.to_string()),
        }
    }
}

impl fmt::Display for OrchestrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.details.message)
    }
}

impl fmt::Debug for OrchestrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.details, f)
    }
}

/// What kind of durable call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// An activity.
    Activity,
    /// A sub-orchestration.
    SubOrchestration,
    /// An external event wait that timed out.
    ExternalEvent,
    /// A durable HTTP call.
    Http,
    /// A call to an entity.
    Entity,
}

/// A durable call failed: the activity or sub-orchestration reported a failure, the
/// result could not be decoded, or a wait timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError {
    /// What was called.
    pub kind: TaskKind,
    /// The durable name of what was called (activity, orchestrator or event name).
    pub name: String,
    /// The failure as recorded.
    pub failure: FailureDetails,
}

/// The `error_type` of a [`TaskError`] whose result or event data did not decode as the
/// expected type.
pub const DECODE_ERROR: &str = "DeserializationError";

impl TaskError {
    /// True when the failure came from a timeout.
    pub fn is_timeout(&self) -> bool {
        self.failure.error_type == "Timeout"
    }

    /// True when the call's result, or an external event's data, did not decode as the
    /// expected type. For an event this is the sender's mistake, not the orchestration's:
    /// the event was consumed (on replay, the same event fails the same way), so waiting
    /// again receives the next one. Match it to reject a badly shaped event and keep
    /// waiting instead of failing the instance:
    ///
    /// ```
    /// # use durable_core::{OrchestrationContext, OrchestrationError};
    /// # #[derive(serde::Deserialize)] struct Decision { approved: bool }
    /// # async fn wait(ctx: OrchestrationContext) -> Result<bool, OrchestrationError> {
    /// let decision = loop {
    ///     match ctx.wait_for_external_event::<Decision>("Decision").await {
    ///         Ok(d) => break d,
    ///         Err(e) if e.is_decode_error() => ctx.set_custom_status(&format!("ignored: {e}")),
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// };
    /// # Ok(decision.approved) }
    /// ```
    pub fn is_decode_error(&self) -> bool {
        self.failure.error_type == DECODE_ERROR
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TaskKind::Activity => "activity",
            TaskKind::SubOrchestration => "sub-orchestration",
            TaskKind::ExternalEvent => "external event",
            TaskKind::Http => "HTTP call",
            TaskKind::Entity => "entity",
        };
        write!(f, "{what} '{}' failed: {}", self.name, self.failure.message)
    }
}

impl std::error::Error for TaskError {}

/// Errors from [`DurableClient`](crate::DurableClient) and the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No orchestrator, activity or entity is registered under this name.
    UnknownName {
        /// What was looked up ("orchestrator", "activity", "entity").
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No instance with this id.
    InstanceNotFound(String),
    /// The instance exists and is not finished.
    InstanceExists {
        /// The id.
        instance_id: String,
        /// Its status.
        status: RuntimeStatus,
    },
    /// The operation does not apply to an instance in this status (e.g. raising an event
    /// on a completed instance, rewinding one that did not fail).
    InvalidStatus {
        /// The id.
        instance_id: String,
        /// Its status.
        status: RuntimeStatus,
        /// What was attempted.
        operation: &'static str,
    },
    /// The argument is malformed (bad instance id, bad JSON, bad token).
    InvalidArgument(String),
    /// A payload is over the configured limit.
    PayloadTooLarge {
        /// What it is.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Waiting for an instance timed out.
    Timeout(String),
    /// Two registrations share a durable name.
    DuplicateName(String),
    /// The store failed; [`Error::is_retryable`] says whether trying again later can help.
    Store(StoreError),
}

impl Error {
    /// True for a store failure that may pass if the call is retried later (busy, full
    /// disk): see [`StoreError::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_retryable())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownName { kind, name } => {
                write!(f, "no {kind} named '{name}' is registered")
            }
            Error::InstanceNotFound(id) => write!(f, "no instance with id '{id}'"),
            Error::InstanceExists {
                instance_id,
                status,
            } => write!(
                f,
                "an instance with id '{instance_id}' already exists and is {status}"
            ),
            Error::InvalidStatus {
                instance_id,
                status,
                operation,
            } => write!(
                f,
                "cannot {operation} instance '{instance_id}': it is {status}"
            ),
            Error::InvalidArgument(m) => f.write_str(m),
            Error::PayloadTooLarge { what, size, limit } => {
                write!(f, "{what} is {size} bytes, over the limit of {limit} bytes")
            }
            Error::Timeout(m) => f.write_str(m),
            Error::DuplicateName(m) => f.write_str(m),
            Error::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e.kind() {
            StoreErrorKind::AlreadyExists { status } => Error::InstanceExists {
                instance_id: e.instance_id().unwrap_or_default().to_string(),
                status,
            },
            StoreErrorKind::NotFound => {
                Error::InstanceNotFound(e.instance_id().unwrap_or_default().to_string())
            }
            StoreErrorKind::Invalid => Error::InvalidArgument(e.message().to_string()),
            _ => Error::Store(e),
        }
    }
}

impl From<PayloadTooLarge> for Error {
    fn from(e: PayloadTooLarge) -> Self {
        Error::PayloadTooLarge {
            what: e.what,
            size: e.size,
            limit: e.limit,
        }
    }
}

/// The last path segment of a type's name, for error classification only (never for
/// durable names).
fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails_with_message(flag: bool) -> Result<u32, ActivityError> {
        if flag {
            Err("plain message")?;
        }
        Err(format!("formatted {}", 7))?
    }

    #[test]
    fn messages_convert_into_activity_errors() {
        let e = ActivityError::from(format!("order {} not found", 42));
        assert_eq!(e.details().error_type, "ActivityError");
        assert_eq!(e.details().message, "order 42 not found");
        let e = ActivityError::from("no stock");
        assert_eq!(e.details().error_type, "ActivityError");
        assert_eq!(e.details().message, "no stock");
        assert_eq!(
            fails_with_message(true).unwrap_err().to_string(),
            "plain message"
        );
        assert_eq!(
            fails_with_message(false).unwrap_err().to_string(),
            "formatted 7"
        );
    }

    #[test]
    fn errors_keep_their_type_name_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "missing file");
        let e = ActivityError::from(io);
        assert_eq!(e.details().error_type, "Error");
        assert_eq!(e.details().message, "missing file");
        let parse = "x".parse::<u32>().unwrap_err();
        let e = ActivityError::from(parse);
        assert_eq!(e.details().error_type, "ParseIntError");
    }
}
