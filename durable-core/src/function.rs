//! What a durable function is, whatever its kind: the typed handles the attribute macros
//! implement ([`Activity`], [`Orchestrator`]), the [`Payload`] bound on what travels through
//! a history, and the shape of a type-erased run ([`BoxFuture`] of an [`Outcome`]).

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::history::FailureDetails;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What running an orchestrator or activity yields: JSON output or a failure.
pub type Outcome = Result<Option<String>, FailureDetails>;

/// A typed handle to an activity, implemented by `#[activity]` for the unit struct that
/// shares the function's name. Lets `ctx.call_activity(say_hello, input)` check types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an activity",
    label = "expected a function annotated with #[activity]",
    note = "annotate the async fn with `#[durable_core::activity]`, or call it by name with `call_activity_by_name`"
)]
pub trait Activity: Copy + Send + Sync + 'static {
    /// The input type (a tuple when the function takes several inputs, `()` for none).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The success type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The durable name.
    const NAME: &'static str;
}

/// A typed handle to an orchestrator, implemented by `#[orchestrator]` for the unit struct
/// that shares the function's name. Lets `client.start(hello, input)` and
/// `ctx.call_sub_orchestrator(child, input)` check types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an orchestrator",
    label = "expected a function annotated with #[orchestrator]",
    note = "annotate the async fn with `#[durable_core::orchestrator]`, or start it by name with `start_by_name`"
)]
pub trait Orchestrator: Copy + Send + Sync + 'static {
    /// The input type (`()` when the function takes none).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The success type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The durable name.
    const NAME: &'static str;
    /// The version, if one was given.
    const VERSION: Option<&'static str>;
}

/// A value that can travel through a history: an input, an output, an entity's state.
/// Implemented for every `Serialize + DeserializeOwned + Send + 'static` type; the
/// attribute macros assert it at the user's type so a missing derive is reported there.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel through a durable history: it must implement `Serialize` and `DeserializeOwned`",
    label = "not serializable",
    note = "inputs, outputs and entity state are stored as JSON: add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}` (for a type from another crate, enable its `serde` feature or wrap it)"
)]
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

/// `T` itself, when it is a [`Payload`]. The attribute macros name input types through
/// `<T as Checked>::Type`: for a type that cannot travel through a history, that one
/// projection fails with [`Payload`]'s message and every later use of the type is left
/// unreported, so the mistake is reported once, in words about histories.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel through a durable history: it must implement `Serialize` and `DeserializeOwned`",
    label = "not serializable",
    note = "inputs, outputs and entity state are stored as JSON: add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}` (for a type from another crate, enable its `serde` feature or wrap it)"
)]
pub trait Checked {
    /// `Self`.
    type Type: Payload;
}

#[diagnostic::do_not_recommend]
impl<T: Payload> Checked for T {
    type Type = T;
}

/// The message of a panic caught while running user code.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
