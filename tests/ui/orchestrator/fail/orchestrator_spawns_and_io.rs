use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    let _ = ctx;
    tokio::spawn(async {});
    let home = std::env::var("HOME").unwrap_or_default();
    let text = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    Ok(home + &text)
}
fn main() {}
