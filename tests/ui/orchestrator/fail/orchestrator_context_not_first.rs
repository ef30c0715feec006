use durable_core::{OrchestrationContext, OrchestrationError};
#[durable_core::orchestrator]
async fn hello(cities: Vec<String>, ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = (ctx, cities);
    Ok(())
}
fn main() {}
