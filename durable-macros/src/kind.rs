//! Which attribute is being expanded.

/// One of the four attributes; its `Display` is the attribute as users write it, so every
/// message names the attribute the user wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Activity,
    Orchestrator,
    HttpStart,
    Entity,
}

impl Kind {
    /// The option keys this attribute accepts, listed in "unknown option" messages.
    pub fn accepted_options(self) -> &'static [&'static str] {
        match self {
            Kind::Activity => &["name", "timeout"],
            Kind::Orchestrator => &["name", "version"],
            Kind::HttpStart => &["route", "method", "methods"],
            Kind::Entity => &["name"],
        }
    }

    /// The context type a function of this kind may take (recognized by its last path
    /// segment, as documented).
    pub fn context_type(self) -> &'static str {
        match self {
            Kind::Activity => "ActivityContext",
            Kind::Orchestrator => "OrchestrationContext",
            Kind::HttpStart => "DurableClient",
            Kind::Entity => "EntityContext",
        }
    }

    /// The shape this attribute accepts, quoted in signature errors.
    pub fn accepted_shape(self) -> &'static str {
        match self {
            Kind::Activity => "`async fn name([ctx: ActivityContext,] inputs...) -> R`",
            Kind::Orchestrator => {
                "`async fn name(ctx: OrchestrationContext[, input: I]) -> Result<O, E>`"
            }
            Kind::HttpStart => {
                "`async fn name(client: DurableClient, req: HttpRequest) -> HttpResult`"
            }
            Kind::Entity => {
                "`impl State { pub fn op(&mut self[, ctx: &EntityContext<State>][, input: I]) -> R }` or `async fn name(ctx: EntityContext<State>, op: Operation) -> R`"
            }
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
