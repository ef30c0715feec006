use durable_core::{OrchestrationContext, OrchestrationError};
pub struct Flows;
impl Flows {
    #[durable_core::orchestrator]
    async fn hello(&self, ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
        let _ = ctx;
        Ok(())
    }
}
fn main() {}
