//! Attribute macros for durable: `#[activity]`, `#[orchestrator]` and `#[http_start]`.
//!
//! Use them through `durable_core`, which re-exports them; generated code names runtime
//! items only through `::durable_core::__private`, so an application depends on
//! `durable-core` alone.
//!
//! Each attribute runs one pipeline: parse (options and function) -> validate (every
//! check, all errors reported together, each spanned at the offending token) -> expand.
//! When validation fails, the function is emitted unchanged next to the errors, so the
//! rest of the crate keeps compiling and no follow-on errors appear. Set
//! `DURABLE_MACROS_DEBUG=1` while building to print every expansion to stderr.

mod determinism;
mod expand;
mod parse;
mod validate;

use proc_macro::TokenStream;
use quote::ToTokens;

/// Which attribute is being expanded; its `Display` is the attribute as users write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Activity,
    Orchestrator,
    HttpStart,
    Entity,
}

impl Kind {
    fn accepted_options(self) -> &'static [&'static str] {
        match self {
            Kind::Activity => &["name"],
            Kind::Orchestrator => &["name", "version"],
            Kind::HttpStart => &["route", "method", "methods"],
            Kind::Entity => &["name"],
        }
    }

    fn context_type(self) -> &'static str {
        match self {
            Kind::Activity => "ActivityContext",
            Kind::Orchestrator => "OrchestrationContext",
            Kind::HttpStart => "DurableClient",
            Kind::Entity => "EntityContext",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Activity => "#[activity]",
            Kind::Orchestrator => "#[orchestrator]",
            Kind::HttpStart => "#[http_start]",
            Kind::Entity => "#[entity]",
        })
    }
}

fn run(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = item.into();
    let mut errors = Vec::new();
    let args = parse::parse_args(kind, attr.into(), &mut errors);
    if kind == Kind::Entity {
        let mut out = match syn::parse2::<syn::Item>(item.clone()) {
            Ok(syn::Item::Impl(i)) => expand::entity::expand_impl(args, i, &mut errors),
            Ok(syn::Item::Fn(f)) => expand::entity::expand_fn(args, f, &mut errors),
            _ => {
                errors.push(syn::Error::new(
                    proc_macro2::Span::call_site(),
                    "#[entity] goes on an `impl State { ... }` block or on an `async fn(ctx: EntityContext<S>, op: Operation)`",
                ));
                item
            }
        };
        if let Some(e) = errors.into_iter().reduce(|mut a, b| {
            a.combine(b);
            a
        }) {
            out.extend(e.to_compile_error());
        }
        return out.into();
    }
    let out = match parse::parse_fn(kind, item.clone()) {
        Err(e) => {
            errors.push(e);
            item
        }
        Ok(mut func) => {
            let mut warnings = proc_macro2::TokenStream::new();
            if kind == Kind::Orchestrator {
                let (found, warn) = determinism::check(&mut func.block);
                errors.extend(found);
                warnings = warn;
            }
            let original = func.to_token_stream();
            let mut out = if kind == Kind::HttpStart {
                match validate::validate_http_start(args, func, &mut errors) {
                    Some(f) if errors.is_empty() => expand::http_start(f),
                    _ => original,
                }
            } else {
                match validate::validate(kind, args, func, &mut errors) {
                    Some(f) if errors.is_empty() && kind == Kind::Activity => expand::activity(f),
                    Some(f) if errors.is_empty() => expand::orchestrator(f),
                    _ => original,
                }
            };
            out.extend(warnings);
            out
        }
    };
    let mut out = out;
    if let Some(combined) = errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    }) {
        out.extend(combined.to_compile_error());
    }
    if std::env::var_os("DURABLE_MACROS_DEBUG").is_some_and(|v| v != "0") {
        eprintln!("// {kind} expansion:\n{out}\n");
    }
    out.into()
}

/// Turns an `async fn` into an activity: the unit of side-effecting work an orchestration
/// calls. Activities run at least once (after a crash they may run again); make their
/// side effects idempotent with [`ActivityContext::idempotency_key`].
///
/// # Accepted shape
///
/// `async fn name([ctx: ActivityContext,] inputs...) -> R`
///
/// - an optional first parameter of type `ActivityContext` (recognized by its name);
/// - zero or more inputs of owned, serializable types; several inputs travel as one
///   tuple `(A, B, ...)`, none as `()`;
/// - `R` is `Result<T, E>` (`T: Serialize + DeserializeOwned`, `E: Display`) or a plain
///   serializable value.
///
/// Options: `name = "..."`, the durable name (default: the function's name). Keep it
/// stable: it is recorded in histories.
///
/// # What it generates
///
/// A unit struct with the function's name that is both callable like the function
/// (`say_hello("Tokyo".into()).await` in a unit test) and a typed handle for
/// `ctx.call_activity(say_hello, input)`, which checks the input and output types at
/// compile time; an implementation of `Activity`; and a link-time registration, so
/// `Runtime`/`Host` find it with no list to maintain.
///
/// ```ignore
/// use durable_core::{activity, ActivityError};
///
/// #[activity]
/// async fn say_hello(city: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {city}!"))
/// }
/// ```
///
/// The most common mistake, a function that is not `async`:
///
/// ```text
/// #[durable_core::activity]
/// fn say_hello(city: String) -> String { city }
/// ```
///
/// [`ActivityContext::idempotency_key`]: https://docs.rs/durable-core
#[proc_macro_attribute]
pub fn activity(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Activity, attr, item)
}

/// Turns an `async fn` into an orchestrator: a workflow replayed from its history, so it
/// survives crashes and restarts and can wait for timers and events for as long as needed.
///
/// # Accepted shape
///
/// `async fn name(ctx: OrchestrationContext[, input: I]) -> Result<O, E>`
///
/// The context comes first; at most one input follows (use a struct or tuple for more).
/// The body must be deterministic: take time, ids, sleeps and I/O from the context
/// (`ctx.current_utc_datetime()`, `ctx.new_guid()`, `ctx.create_timer(..)`, activities).
///
/// # Determinism checks
///
/// The compiler refuses, with the replay-safe replacement in the message: wall-clock time
/// (`SystemTime::now`, `Instant::now`, `Utc::now`, `Local::now`,
/// `OffsetDateTime::now_utc`), sleeping (`tokio::time::sleep`/`sleep_until`/`interval`/
/// `timeout`, `std::thread::sleep`), randomness (`rand::random`/`thread_rng`/`rng`,
/// `Uuid::new_v4`), spawning (`tokio::spawn`, `std::thread::spawn`, `spawn_blocking`),
/// I/O (`std::fs`, `tokio::fs`, `std::net`, `tokio::net`, `reqwest`), the environment
/// (`std::env::var`), and `tokio::select!` without `biased;`. A `loop {}` or
/// `while true {}` that awaits without `continue_as_new` gets a warning about unbounded
/// history. Mark a statement `#[nondeterministic]` to exempt it deliberately.
///
/// The check is syntactic: it matches paths in this function's body by their last
/// segments, so it cannot see inside helper functions, through `use ... as` renames, or a
/// bare `sleep(..)` imported with `use`. Keep such code in activities.
///
/// Options: `name = "..."` (durable name, default the function's name) and
/// `version = "..."` (recorded with each instance; several versions of one name may be
/// registered side by side, and an instance always replays on the version it started with).
///
/// # What it generates
///
/// A unit struct with the function's name, callable like the function and usable as a
/// typed handle: `client.start(hello_cities, input)` and
/// `ctx.call_sub_orchestrator(hello_cities, input)` check types at compile time; an
/// implementation of `Orchestrator`; and a link-time registration.
///
/// ```ignore
/// use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
///
/// #[orchestrator]
/// async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
///     let mut out = Vec::new();
///     for city in cities {
///         out.push(ctx.call_activity(say_hello, city).await?);
///     }
///     Ok(out)
/// }
/// ```
///
/// The most common mistake, a missing context:
///
/// ```text
/// #[durable_core::orchestrator]
/// async fn hello(cities: Vec<String>) -> Result<(), String> { Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn orchestrator(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Orchestrator, attr, item)
}

/// Turns an `async fn(client: DurableClient, req: HttpRequest) -> HttpResult` into an HTTP
/// start endpoint served by `durable_http::Host`.
///
/// Options: `route = "/api/hello"` (required; `{name}` segments fill `req.param("name")`)
/// and `method = "POST"` or `methods = "GET, POST"` (default `POST`). Two endpoints with
/// the same method and route shape are a startup error naming both.
///
/// The function stays as written (callable in unit tests); a link-time registration is
/// added next to it.
///
/// ```ignore
/// use durable_http::{http_start, ClientExt, DurableClient, HttpRequest, HttpResult};
///
/// #[http_start(route = "/api/hello", method = "POST")]
/// async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
///     let cities: Vec<String> = req.json()?;
///     let id = client.start(hello_cities, cities).await?;
///     Ok(client.check_status_response(&req, &id))
/// }
/// ```
#[proc_macro_attribute]
pub fn http_start(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::HttpStart, attr, item)
}

/// Turns the `impl` block of a state type into a durable entity: small state addressed by
/// a key, changed by operations that run one at a time.
///
/// # Accepted shapes
///
/// - On `impl State { ... }` (State: `Default + Serialize + DeserializeOwned`): every
///   `pub` method is an operation named like the method, taking `&self` or `&mut self`,
///   optionally `ctx: &EntityContext<State>` next, and at most one input; it may be
///   `async` and may return a value or `Result<T, E>`. A failing operation leaves the
///   state unchanged. An operation `delete` exists unless you define one.
/// - On `async fn name(ctx: EntityContext<S>, op: Operation) -> R`: a function-style
///   entity reading `op.name`, `op.input()` and `ctx.get_state()`/`set_state()`.
///
/// Option: `name = "..."` (default: the type or function name, lower-cased; entity names
/// are case-insensitive, keys case-sensitive).
///
/// # What it generates (impl form)
///
/// `impl Entity for State` and two proxies, so calls are type-checked:
/// `ctx.entity::<Counter>("game1").add(5).await?` from an orchestration and
/// `client.entity::<Counter>("game1").signal().add(5).await?` from anywhere.
///
/// ```ignore
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Counter { value: i64 }
///
/// #[entity]
/// impl Counter {
///     pub fn add(&mut self, n: i64) -> i64 { self.value += n; self.value }
///     pub fn reset(&mut self) { self.value = 0 }
///     pub fn get(&self) -> i64 { self.value }
/// }
/// ```
#[proc_macro_attribute]
pub fn entity(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Entity, attr, item)
}
