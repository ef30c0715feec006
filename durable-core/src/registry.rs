//! The registry: which orchestrators and activities exist, by durable name. Filled at link
//! time by the attribute macros (through `inventory`) and, for tests and dynamic cases, by
//! closures registered on a [`RegistryBuilder`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::activity::ActivityContext;
use crate::context::OrchestrationContext;
use crate::entity::{EntityContext, EntityFn, Operation};
use crate::error::Error;
use crate::history::FailureDetails;
use crate::payload::{decode_input, InputType};

pub use crate::function::{Activity, BoxFuture, Orchestrator, Outcome, Payload};

/// The type-erased entry point of an orchestrator.
pub type OrchestratorFn =
    Arc<dyn Fn(OrchestrationContext, Option<String>) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// The type-erased entry point of an activity.
pub type ActivityFn =
    Arc<dyn Fn(ActivityContext, Option<String>) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// How a durable function's return value becomes a recorded outcome. Implemented for
/// `Result<T, E>` (T serializable, E: Display) and for [`Plain`] values.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a durable function",
    note = "return `Result<T, E>` where T: Serialize + DeserializeOwned and E: Display, or a plain serializable value"
)]
pub trait TaskOutcome {
    /// The success type.
    type Ok: Serialize + DeserializeOwned + Send + 'static;
    /// Encodes the value as JSON or a failure.
    fn into_outcome(self) -> Outcome;
}

impl<T, E> TaskOutcome for Result<T, E>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: fmt::Display + 'static,
{
    type Ok = T;
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(v) => encode(&v),
            Err(e) => Err(failure_of(e)),
        }
    }
}

/// Wraps a non-`Result` return value.
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T: Serialize + DeserializeOwned + Send + 'static> TaskOutcome for Plain<T> {
    type Ok = T;
    fn into_outcome(self) -> Outcome {
        encode(&self.0)
    }
}

/// Turns any displayable error into failure details, keeping the details of the
/// framework's own error types.
pub fn failure_of<E: fmt::Display + 'static>(e: E) -> FailureDetails {
    let any: &dyn std::any::Any = &e;
    if let Some(a) = any.downcast_ref::<crate::error::ActivityError>() {
        return a.details().clone();
    }
    if let Some(o) = any.downcast_ref::<crate::error::OrchestrationError>() {
        return o.details().clone();
    }
    if let Some(d) = any.downcast_ref::<FailureDetails>() {
        return d.clone();
    }
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    let short = base.rsplit("::").next().unwrap_or(base);
    FailureDetails::new(short, e.to_string())
}

/// Serializes a value as a JSON payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Outcome {
    serde_json::to_string(value).map(Some).map_err(|e| {
        FailureDetails::new(
            "SerializationError",
            format!("cannot serialize output: {e}"),
        )
    })
}

/// Link-time registration of an orchestrator, emitted by `#[orchestrator]`.
pub struct OrchestratorRegistration {
    /// Durable name.
    pub name: &'static str,
    /// Version.
    pub version: Option<&'static str>,
    /// Entry point.
    pub invoke: fn(OrchestrationContext, Option<String>) -> BoxFuture<'static, Outcome>,
    /// The input type, checked at the door before an instance is stored.
    pub input: InputType,
    /// `module::path` and `file:line` of the definition, for duplicate-name errors.
    pub location: &'static str,
}

/// Link-time registration of an activity, emitted by `#[activity]`.
pub struct ActivityRegistration {
    /// Durable name.
    pub name: &'static str,
    /// Entry point.
    pub invoke: fn(ActivityContext, Option<String>) -> BoxFuture<'static, Outcome>,
    /// The default start-to-close timeout (`timeout = "..."`), in milliseconds.
    pub start_to_close_ms: Option<u64>,
    /// `module::path` and `file:line` of the definition, for duplicate-name errors.
    pub location: &'static str,
}

/// Link-time registration of an entity, emitted by `#[entity]`.
pub struct EntityRegistration {
    /// Durable name (lower-case).
    pub name: &'static str,
    /// Runs one operation.
    pub invoke: fn(EntityContext, Operation) -> BoxFuture<'static, (EntityContext, Outcome)>,
    /// The operations, when known (`#[entity]` on an `impl` block); `None` for a
    /// function-style entity, which decides what it accepts itself.
    pub operations: Option<&'static [OperationType]>,
    /// `module::path` and `file:line` of the definition, for duplicate-name errors.
    pub location: &'static str,
}

/// An entity operation as a door sees it: its name and, when it takes one, its input type.
#[derive(Clone, Copy, Debug)]
pub struct OperationType {
    /// The operation name.
    pub name: &'static str,
    /// The input type; `None` when the operation takes no input (any input is ignored).
    pub input: Option<InputType>,
}

inventory::collect!(OrchestratorRegistration);
inventory::collect!(ActivityRegistration);
inventory::collect!(EntityRegistration);

/// A registered entity.
#[derive(Clone)]
pub struct EntityEntry {
    /// Durable name (lower-case).
    pub name: String,
    /// Runs one operation.
    pub invoke: EntityFn,
    /// The operations, when known (see [`EntityRegistration::operations`]).
    pub operations: Option<&'static [OperationType]>,
    /// Where it was defined.
    pub location: String,
}

/// A registered orchestrator.
#[derive(Clone)]
pub struct OrchestratorEntry {
    /// Durable name.
    pub name: String,
    /// Version.
    pub version: Option<String>,
    /// Entry point.
    pub invoke: OrchestratorFn,
    /// The input type.
    pub input: InputType,
    /// Where it was defined.
    pub location: String,
}

/// A registered activity.
#[derive(Clone)]
pub struct ActivityEntry {
    /// Durable name.
    pub name: String,
    /// Entry point.
    pub invoke: ActivityFn,
    /// The start-to-close timeout of calls that set none
    /// ([`ActivityOptions::start_to_close`](crate::ActivityOptions::start_to_close)).
    pub start_to_close: Option<std::time::Duration>,
    /// Where it was defined.
    pub location: String,
}

/// Orchestrators and activities by durable name.
#[derive(Clone, Default)]
pub struct Registry {
    orchestrators: HashMap<String, Vec<OrchestratorEntry>>,
    activities: HashMap<String, ActivityEntry>,
    entities: HashMap<String, EntityEntry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o: Vec<_> = self.orchestrators.keys().collect();
        let mut a: Vec<_> = self.activities.keys().collect();
        let mut e: Vec<_> = self.entities.keys().collect();
        o.sort();
        a.sort();
        e.sort();
        f.debug_struct("Registry")
            .field("orchestrators", &o)
            .field("activities", &a)
            .field("entities", &e)
            .finish()
    }
}

impl Registry {
    /// Everything registered by the attribute macros in this binary.
    pub fn from_inventory() -> Result<Self, Error> {
        RegistryBuilder::default().with_inventory().build()
    }

    /// An empty builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The orchestrator for `name`: the given version, or the newest when `version` is None.
    pub fn orchestrator(&self, name: &str, version: Option<&str>) -> Option<&OrchestratorEntry> {
        let entries = self.orchestrators.get(name)?;
        match version {
            Some(v) => entries.iter().find(|e| e.version.as_deref() == Some(v)),
            None => entries.last(),
        }
    }

    /// The orchestrator an execution recorded with `version` replays on: exactly that
    /// version. An execution recorded without one replays on the unversioned registration;
    /// only when none is registered (a history written before versions were resolved at
    /// start) on the newest.
    pub fn recorded_orchestrator(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Option<&OrchestratorEntry> {
        let entries = self.orchestrators.get(name)?;
        match version {
            Some(_) => self.orchestrator(name, version),
            None => entries
                .iter()
                .find(|e| e.version.is_none())
                .or(entries.last()),
        }
    }

    /// The activity for `name`.
    pub fn activity(&self, name: &str) -> Option<&ActivityEntry> {
        self.activities.get(name)
    }

    /// Puts `entry` in place of the activity of the same name (or adds it).
    #[cfg(feature = "testing")]
    pub(crate) fn replace_activity(&mut self, entry: ActivityEntry) {
        self.activities.insert(entry.name.clone(), entry);
    }

    /// The entity for `name` (case-insensitive).
    pub fn entity(&self, name: &str) -> Option<&EntityEntry> {
        self.entities.get(&name.to_lowercase())
    }

    /// Names of all entities, sorted.
    pub fn entity_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.entities.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Names of all orchestrators, sorted.
    pub fn orchestrator_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.orchestrators.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Names of all activities, sorted.
    pub fn activity_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.activities.keys().map(String::as_str).collect();
        v.sort();
        v
    }
}

/// Builds a [`Registry`]; duplicate durable names are reported by [`build`](Self::build).
#[derive(Default)]
pub struct RegistryBuilder {
    orchestrators: Vec<OrchestratorEntry>,
    activities: Vec<ActivityEntry>,
    entities: Vec<EntityEntry>,
}

impl RegistryBuilder {
    /// Adds everything registered by the attribute macros.
    pub fn with_inventory(mut self) -> Self {
        for r in inventory::iter::<OrchestratorRegistration> {
            let invoke = r.invoke;
            self.orchestrators.push(OrchestratorEntry {
                name: r.name.to_string(),
                version: r.version.map(str::to_string),
                invoke: Arc::new(invoke),
                input: r.input,
                location: r.location.to_string(),
            });
        }
        for r in inventory::iter::<EntityRegistration> {
            let invoke = r.invoke;
            self.entities.push(EntityEntry {
                name: r.name.to_lowercase(),
                invoke: Arc::new(invoke),
                operations: r.operations,
                location: r.location.to_string(),
            });
        }
        for r in inventory::iter::<ActivityRegistration> {
            let invoke = r.invoke;
            self.activities.push(ActivityEntry {
                name: r.name.to_string(),
                invoke: Arc::new(invoke),
                start_to_close: r.start_to_close_ms.map(std::time::Duration::from_millis),
                location: r.location.to_string(),
            });
        }
        self
    }

    /// Registers an orchestrator written as a closure or function with typed input.
    pub fn orchestrator<I, R, F, Fut>(self, name: &str, f: F) -> Self
    where
        I: Payload,
        R: TaskOutcome,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.push_orchestrator(name, None, f)
    }

    /// Registers one version of an orchestrator written as a closure or function, like
    /// `#[orchestrator(version = "...")]`: several versions of one name live side by side,
    /// new instances start on the newest and each instance replays on the version it
    /// started with.
    pub fn orchestrator_version<I, R, F, Fut>(self, name: &str, version: &str, f: F) -> Self
    where
        I: Payload,
        R: TaskOutcome,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.push_orchestrator(name, Some(version), f)
    }

    fn push_orchestrator<I, R, F, Fut>(mut self, name: &str, version: Option<&str>, f: F) -> Self
    where
        I: Payload,
        R: TaskOutcome,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let f = Arc::new(f);
        let label = format!("orchestrator '{name}'");
        self.orchestrators.push(OrchestratorEntry {
            name: name.to_string(),
            version: version.map(str::to_string),
            invoke: Arc::new(move |ctx, input| {
                let f = f.clone();
                let label = label.clone();
                Box::pin(async move {
                    let input: I = decode_input(&label, input.as_deref())?;
                    f(ctx, input).await.into_outcome()
                })
            }),
            input: InputType::of::<I>(),
            location: format!("{name} (registered at run time)"),
        });
        self
    }

    /// Registers an activity written as a closure or function with typed input.
    pub fn activity<I, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        R: TaskOutcome,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.activities.push(activity_entry(name, f));
        self
    }

    /// Registers an activity like [`activity`](Self::activity), with a default
    /// start-to-close timeout like `#[activity(timeout = "30s")]`: an attempt of a call
    /// that gives none
    /// ([`ActivityOptions::start_to_close`](crate::ActivityOptions::start_to_close)) is
    /// stopped after `timeout` and fails with a `Timeout` failure.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use durable_core::{ActivityContext, ActivityError, Registry};
    /// let registry = Registry::builder()
    ///     .activity_with_timeout("fetch", Duration::from_secs(30), |_ctx: ActivityContext, url: String| async move {
    ///         Ok::<_, ActivityError>(url.len())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(
    ///     registry.activity("fetch").unwrap().start_to_close,
    ///     Some(Duration::from_secs(30))
    /// );
    /// ```
    pub fn activity_with_timeout<I, R, F, Fut>(
        mut self,
        name: &str,
        timeout: std::time::Duration,
        f: F,
    ) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        R: TaskOutcome,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.activities.push(ActivityEntry {
            start_to_close: Some(timeout),
            ..activity_entry(name, f)
        });
        self
    }

    /// Registers a function-style entity: `f(ctx, operation)` runs one operation, reading
    /// and writing the state through `ctx`; its return value answers calls.
    pub fn entity<S, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        S: Serialize + DeserializeOwned + 'static,
        R: TaskOutcome,
        F: Fn(EntityContext<S>, Operation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let f = Arc::new(f);
        self.entities.push(EntityEntry {
            name: name.to_lowercase(),
            invoke: Arc::new(move |ctx: EntityContext, op| {
                let f = f.clone();
                Box::pin(async move {
                    let typed: EntityContext<S> = ctx.clone().retype();
                    let outcome = f(typed, op).await.into_outcome();
                    (ctx, outcome)
                })
            }),
            operations: None,
            location: format!("{name} (registered at run time)"),
        });
        self
    }

    /// Checks for duplicate names and builds the registry.
    pub fn build(self) -> Result<Registry, Error> {
        let mut reg = Registry::default();
        let mut dups = Vec::new();
        for o in self.orchestrators {
            let list = reg.orchestrators.entry(o.name.clone()).or_default();
            if let Some(prev) = list.iter().find(|e| e.version == o.version) {
                dups.push(format!(
                    "orchestrator '{}'{} is defined twice: at {} and at {}",
                    o.name,
                    o.version
                        .as_deref()
                        .map(|v| format!(" version '{v}'"))
                        .unwrap_or_default(),
                    prev.location,
                    o.location
                ));
                continue;
            }
            list.push(o);
        }
        for list in reg.orchestrators.values_mut() {
            list.sort_by(|a, b| compare_versions(a.version.as_deref(), b.version.as_deref()));
        }
        for a in self.activities {
            if let Some(prev) = reg.activities.get(&a.name) {
                dups.push(format!(
                    "activity '{}' is defined twice: at {} and at {}",
                    a.name, prev.location, a.location
                ));
                continue;
            }
            reg.activities.insert(a.name.clone(), a);
        }
        for e in self.entities {
            if let Some(prev) = reg.entities.get(&e.name) {
                dups.push(format!(
                    "entity '{}' is defined twice: at {} and at {}",
                    e.name, prev.location, e.location
                ));
                continue;
            }
            reg.entities.insert(e.name.clone(), e);
        }
        if dups.is_empty() {
            Ok(reg)
        } else {
            dups.sort();
            Err(Error::DuplicateName(format!(
                "duplicate durable names: {}",
                dups.join("; ")
            )))
        }
    }
}

/// An activity entry running the closure `f` with typed input.
pub(crate) fn activity_entry<I, R, F, Fut>(name: &str, f: F) -> ActivityEntry
where
    I: DeserializeOwned + Send + 'static,
    R: TaskOutcome,
    F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let label = format!("activity '{name}'");
    ActivityEntry {
        name: name.to_string(),
        invoke: Arc::new(move |ctx, input| {
            let f = f.clone();
            let label = label.clone();
            Box::pin(async move {
                let input: I = decode_input(&label, input.as_deref())?;
                f(ctx, input).await.into_outcome()
            })
        }),
        start_to_close: None,
        location: format!("{name} (registered at run time)"),
    }
}

/// Orders versions: none first, then dotted numeric parts numerically, other text lexically.
fn compare_versions(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(a), Some(b)) => {
            let key = |s: &str| -> Vec<(u64, String)> {
                s.split(['.', '-'])
                    .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
                    .collect()
            };
            key(a).cmp(&key(b))
        }
    }
}
