use durable_core::OrchestrationContext;
#[durable_core::orchestrator]
async fn hello(ctx: OrchestrationContext, a: String, b: u32) -> Result<(), String> {
    let _ = (ctx, a, b);
    Ok(())
}
fn main() {}
