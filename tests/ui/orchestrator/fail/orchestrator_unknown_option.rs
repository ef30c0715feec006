use durable_core::OrchestrationContext;
#[durable_core::orchestrator(versoin = "2")]
async fn hello(ctx: OrchestrationContext) -> Result<(), String> {
    let _ = ctx;
    Ok(())
}
fn main() {}
