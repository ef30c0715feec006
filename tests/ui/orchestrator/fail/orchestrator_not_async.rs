use durable_core::OrchestrationContext;
#[durable_core::orchestrator]
fn hello(ctx: OrchestrationContext) -> Result<(), String> {
    let _ = ctx;
    Ok(())
}
fn main() {}
