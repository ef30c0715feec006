#![deny(warnings)]
use durable_core::{activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError};

#[activity]
async fn say_hello(city: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {city}!"))
}

#[orchestrator]
async fn no_input(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    Ok(ctx.call_activity(say_hello, "x".to_string()).await?)
}

#[orchestrator(name = "greeter", version = "1.2")]
pub async fn with_input(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::new();
    for c in cities {
        out.push(ctx.call_activity(say_hello, c).await?);
    }
    let _: String = ctx.call_sub_orchestrator(no_input, ()).await?;
    Ok(out)
}

#[tokio::main]
async fn main() {
    // The user's functions stay callable directly.
    assert_eq!(say_hello("Oslo".to_string()).await.unwrap(), "Hello Oslo!");
    let _ = with_input;
}
