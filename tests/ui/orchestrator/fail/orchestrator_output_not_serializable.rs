use durable_core::OrchestrationContext;
pub struct Opaque;
#[durable_core::orchestrator]
async fn hello(ctx: OrchestrationContext) -> Result<Opaque, String> {
    let _ = ctx;
    Ok(Opaque)
}
fn main() {}
