use durable_core::OrchestrationContext;
#[durable_core::activity]
async fn greet(ctx: OrchestrationContext, name: String) -> String {
    let _ = ctx;
    name
}
fn main() {}
