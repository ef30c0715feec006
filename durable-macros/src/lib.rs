//! Attribute macros for durable: [`macro@activity`], [`macro@orchestrator`],
//! [`macro@entity`] and [`macro@http_start`].
//!
//! Use them through `durable_core` (and `durable_http` for `#[http_start]`), which
//! re-export them; generated code names runtime items only through
//! `::durable_core::__private`, so an application depends on `durable-core` alone.
//!
//! # How a mistake is reported
//!
//! Each attribute runs one pipeline: parse (options and item) -> validate (every check,
//! all errors of one expansion reported together, each spanned at the offending token and
//! saying what is accepted) -> expand. When validation fails, the item is emitted
//! unchanged next to the errors, so the rest of the crate keeps compiling and no
//! follow-on errors appear. Type checks are left to rustc through assertions spanned at
//! your types: a payload that is not serializable is reported at its type, with a note
//! saying what to derive.
//!
//! # Seeing the generated code
//!
//! `DURABLE_MACROS_DEBUG=1 cargo build` prints every expansion to stderr, laid out one
//! statement per line; `DURABLE_MACROS_DEBUG=hello_cities` prints only the expansion of the
//! item with that name. (Cargo replays cached output only for crates it rebuilds; touch
//! the file to see it again.)
//!
//! # Reviewing changes to generated code
//!
//! The expansion of each attribute's happy path is checked in under
//! `durable-macros/tests/snapshots/*.expanded.rs` and compared by
//! `cargo test -p durable-macros`. After an intended change, regenerate them with
//! `DURABLE_SNAPSHOTS=overwrite cargo test -p durable-macros snapshots` and review the
//! diff with the change. Compile-fail fixtures, one per message, live in
//! `tests/ui/<kind>/{pass,fail}/` (`TRYBUILD=overwrite cargo test -p durable-tests --test ui`).

mod determinism;
mod expand;
mod kind;
mod parse;
mod pipeline;
mod validate;

#[cfg(test)]
mod snapshots;

use proc_macro::TokenStream;

use kind::Kind;

/// Turns an `async fn` into an activity: the unit of side-effecting work an orchestration
/// calls. Activities run at least once (after a crash they may run again); make their
/// side effects idempotent with `ActivityContext::idempotency_key`.
///
/// # Accepted shape
///
/// `async fn name([ctx: ActivityContext,] inputs...) -> R`
///
/// - an optional first parameter of type `ActivityContext` (recognized by its name);
/// - zero or more inputs of owned, serializable types, written as plain names (`city:
///   String`); several inputs travel as one tuple `(A, B, ...)`, none as `()`;
/// - `R` is `Result<T, E>` (`T: Serialize + DeserializeOwned`, `E: Display`) or a plain
///   serializable value.
///
/// Not accepted, each with its own error: a function that is not `async`; `const`,
/// `unsafe`, `extern` or variadic functions; generics and lifetimes; `self`; the context
/// anywhere but first (or another kind's context); references, `impl Trait` and patterns
/// as inputs; `impl Trait` as the return type.
///
/// Options: `name = "..."`, the durable name (default: the function's name). Keep it
/// stable: it is recorded in histories. Two definitions of one name in a binary are a
/// startup error naming both. `timeout = "30s"` (a whole number and `ms`, `s`, `m` or
/// `h`), the start-to-close timeout of calls that set none in their `ActivityOptions`:
/// an attempt running longer is stopped and fails with a `Timeout` failure.
///
/// # What it generates
///
/// A unit struct with the function's name that is both callable like the function
/// (`say_hello("Tokyo".into()).await` in a unit test) and a typed handle for
/// `ctx.call_activity(say_hello, input)`, which checks the input and output types at
/// compile time; an implementation of `durable_core::Activity`; and a link-time
/// registration, so `Worker`/`Host` find it with no list to maintain. The function's
/// body is kept as written, renamed, inside a `const _: () = { ... };` block.
///
/// ```
/// use durable_core::{activity, ActivityContext, ActivityError};
///
/// #[activity]
/// async fn say_hello(city: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {city}!"))
/// }
///
/// #[activity(name = "add_numbers", timeout = "30s")]
/// async fn add(ctx: ActivityContext, a: i64, b: i64) -> i64 {
///     let _ = ctx.attempt();
///     a + b
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Still callable directly, e.g. in a unit test:
/// assert_eq!(say_hello("Tokyo".to_string()).await.unwrap(), "Hello Tokyo!");
/// # }
/// ```
///
/// The most common mistake, a function that is not `async`:
///
/// ```compile_fail
/// #[durable_core::activity]
/// fn say_hello(city: String) -> String {
///     city
/// }
/// ```
#[proc_macro_attribute]
pub fn activity(attr: TokenStream, item: TokenStream) -> TokenStream {
    pipeline::expand(Kind::Activity, attr.into(), item.into()).into()
}

/// Turns an `async fn` into an orchestrator: a workflow replayed from its history, so it
/// survives crashes and restarts and can wait for timers and events for as long as needed.
///
/// # Accepted shape
///
/// `async fn name(ctx: OrchestrationContext[, input: I]) -> Result<O, E>`
///
/// The context comes first; at most one input follows (use a struct or tuple for more).
/// The same signature mistakes as for [`macro@activity`] are errors, plus a missing
/// context and a second input.
///
/// Options: `name = "..."` (durable name, default the function's name) and
/// `version = "..."` (recorded with each instance; several versions of one name may be
/// registered side by side, and an instance always replays on the version it started with).
///
/// # Determinism checks
///
/// An orchestrator is re-run from the top on every replay, so its body must compute the
/// same durable calls each time. The compiler refuses, with the replay-safe replacement in
/// the message:
///
/// | in the body | use instead |
/// | --- | --- |
/// | `SystemTime::now`, `Instant::now`, `Utc::now`, `Local::now`, `OffsetDateTime::now_utc`/`now_local` | `ctx.current_utc_datetime()` |
/// | `tokio::time::sleep`/`sleep_until`/`interval`/`timeout`, `std::thread::sleep` | `ctx.create_timer(..)` |
/// | `rand::random`/`thread_rng`/`rng`, `Uuid::new_v4`/`now_v7` | `ctx.new_guid()`, or an activity |
/// | `tokio::spawn`, `tokio::task::spawn`, `std::thread::spawn`, `spawn_blocking` | an activity, or `ctx.when_all` |
/// | `std::fs`, `tokio::fs`, `std::net`, `tokio::net`, `std::process`, `tokio::process`, `reqwest` | an activity, or `ctx.call_http` |
/// | `std::env::var`/`var_os`/`vars` | an activity, or the orchestration input |
/// | `tokio::select!` without `biased;` | `ctx.when_any(..)` / `durable_core::race` |
///
/// A `loop {}` or `while true {}` that awaits but never calls `continue_as_new` gets a
/// warning: its history grows without bound and every replay gets slower.
///
/// **Escape hatch.** Mark a statement `#[nondeterministic]` to exempt it (and everything
/// inside it) on purpose, e.g. a timestamp that is only logged. The marker is removed
/// before compiling:
///
/// ```
/// # use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
/// #[orchestrator]
/// async fn timed(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
///     #[nondeterministic] // only logged, never decides what the orchestration does
///     let started = std::time::Instant::now();
///     ctx.create_timer(std::time::Duration::from_secs(1)).await;
///     if !ctx.is_replaying() {
///         println!("took {:?}", started.elapsed());
///     }
///     Ok(())
/// }
/// ```
///
/// **What the check cannot see.** It is syntactic: it matches paths written in this
/// function's body (and in expression-list macros such as `println!` or `join!`) by their
/// last segments. It cannot see inside helper functions the body calls, through
/// `use ... as` renames or type aliases declared outside the body, a bare `sleep(..)`
/// imported by a `use` outside the body, methods on values (`rng.gen()`), or macros whose
/// arguments are not expressions. Keep such code in activities; the replay engine still
/// fails an instance whose calls differ from its history with a `NonDeterminism` error.
///
/// # What it generates
///
/// A unit struct with the function's name, callable like the function and usable as a
/// typed handle: `client.start(hello_cities, input)` and
/// `ctx.call_sub_orchestrator(hello_cities, input)` check types at compile time; an
/// implementation of `durable_core::Orchestrator`; and a link-time registration.
///
/// ```
/// use durable_core::{activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError};
///
/// #[activity]
/// async fn say_hello(city: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {city}!"))
/// }
///
/// #[orchestrator(version = "2")]
/// async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
///     let mut out = Vec::new();
///     for city in cities {
///         out.push(ctx.call_activity(say_hello, city).await?);
///     }
///     Ok(out)
/// }
/// ```
///
/// The most common mistake, reading the wall clock:
///
/// ```compile_fail
/// # use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
/// #[orchestrator]
/// async fn deadline(ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
///     let now = std::time::SystemTime::now(); // error: use `ctx.current_utc_datetime()`
///     Ok(now.elapsed().map(|d| d.as_secs()).unwrap_or(0))
/// }
/// ```
#[proc_macro_attribute]
pub fn orchestrator(attr: TokenStream, item: TokenStream) -> TokenStream {
    pipeline::expand(Kind::Orchestrator, attr.into(), item.into()).into()
}

/// Turns an `async fn(client: DurableClient, req: HttpRequest) -> HttpResult` into an HTTP
/// start endpoint served by `durable_http::Host`. Use it as `durable_http::http_start`.
///
/// # Accepted shape
///
/// `async fn name(client: DurableClient, req: HttpRequest) -> R` where `R` is
/// `HttpResult`, `HttpResponse` or anything else that implements `IntoHttpResult`.
/// Exactly these two parameters; no `self`, generics, or `const`/`unsafe`/`extern`.
///
/// Options: `route = "/api/hello"` (required, starts with `/`; `{name}` segments fill
/// `req.param("name")`) and `method = "POST"` or `methods = "GET, POST"` (default `POST`;
/// accepted: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS). Two endpoints with the same
/// method and route shape are a startup error naming both.
///
/// # What it generates
///
/// The function stays as written (callable in unit tests); a link-time registration is
/// added next to it, so `Host` serves it with no list to maintain.
///
/// ```
/// use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
/// use durable_http::{http_start, ClientExt, DurableClient, HttpRequest, HttpResult};
///
/// #[orchestrator]
/// async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<usize, OrchestrationError> {
///     Ok(cities.len())
/// }
///
/// #[http_start(route = "/api/hello", method = "POST")]
/// async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
///     let cities: Vec<String> = req.json()?;
///     let id = client.start(hello_cities, cities).await?;
///     Ok(client.check_status_response(&req, &id))
/// }
/// ```
///
/// The most common mistake, a route without its leading `/`:
///
/// ```compile_fail
/// use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResult};
///
/// #[http_start(route = "api/ping")]
/// async fn ping(_client: DurableClient, _req: HttpRequest) -> HttpResult {
///     Err(HttpError::not_found("nothing here"))
/// }
/// ```
#[proc_macro_attribute]
pub fn http_start(attr: TokenStream, item: TokenStream) -> TokenStream {
    pipeline::expand(Kind::HttpStart, attr.into(), item.into()).into()
}

/// Turns the `impl` block of a state type into a durable entity: small state addressed by
/// a key, changed by operations that run one at a time.
///
/// # Accepted shapes
///
/// - On `impl State { ... }` (State: `Default + Serialize + DeserializeOwned`): every
///   `pub` method is an operation named like the method, taking `&self` or `&mut self`,
///   optionally `ctx: &EntityContext<State>` next, and at most one owned input; it may be
///   `async` and may return a value or `Result<T, E>`. A failing operation leaves the
///   state unchanged. An operation `delete` exists unless you define one. Private methods
///   are helpers and are left alone; a `pub` associated function without `self` (such as
///   `pub fn new()`) is an error: move it to another `impl` block.
/// - On `async fn name(ctx: EntityContext<State>, op: Operation) -> R`: a function-style
///   entity reading `op.name`, `op.input()` and `ctx.get_state()`/`set_state()`.
///
/// Not accepted, each with its own error: generic state types or operations, trait
/// impls, `self` by value, the context anywhere but right after `self`, a second input,
/// references or `impl Trait` as inputs, `unsafe` operations.
///
/// Option: `name = "..."` (default: the type or function name, lower-cased; entity names
/// are case-insensitive, keys case-sensitive; no `@` or spaces).
///
/// # What it generates (impl form)
///
/// The `impl` block as written; `impl Entity for State`; and two proxies, so calls are
/// type-checked: `ctx.entity::<Counter>("game1").add(5).await?` from an orchestration and
/// `client.entity::<Counter>("game1").signal().add(5).await?` from anywhere.
///
/// ```
/// use durable_core::{entity, EntityContext, FailureDetails, Operation};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Counter {
///     value: i64,
/// }
///
/// #[entity]
/// impl Counter {
///     pub fn add(&mut self, n: i64) -> i64 {
///         self.value += n;
///         self.value
///     }
///     pub fn reset(&mut self) {
///         self.value = 0;
///     }
///     pub fn get(&self) -> i64 {
///         self.value
///     }
/// }
///
/// // The function form:
/// #[entity(name = "visits")]
/// async fn visits(ctx: EntityContext<u64>, op: Operation) -> Result<u64, FailureDetails> {
///     let n = ctx.get_state_or_default()? + 1;
///     let _ = op.name;
///     ctx.set_state(&n);
///     Ok(n)
/// }
/// ```
///
/// The most common mistake, a public constructor in the entity's `impl` block:
///
/// ```compile_fail
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)]
/// # pub struct Counter { value: i64 }
/// #[durable_core::entity]
/// impl Counter {
///     pub fn new() -> Self { // error: operations take `&self` or `&mut self`
///         Counter::default()
///     }
///     pub fn get(&self) -> i64 {
///         self.value
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn entity(attr: TokenStream, item: TokenStream) -> TokenStream {
    pipeline::expand(Kind::Entity, attr.into(), item.into()).into()
}
