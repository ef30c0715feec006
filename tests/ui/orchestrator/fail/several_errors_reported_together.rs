use durable_core::{OrchestrationContext, OrchestrationError};
#[durable_core::orchestrator(versoin = "2")]
fn hello(a: String, ctx: OrchestrationContext, b: &str) -> Result<(), OrchestrationError> {
    let _ = (ctx, a, b);
    let _ = std::time::Instant::now();
    Ok(())
}
fn main() {}
