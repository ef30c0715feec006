//! Hello cities: the shortest real path from nothing to a running orchestration. `POST
//! /api/hello` with a JSON list of cities starts `hello_cities`, which greets each city
//! with the `say_hello` activity; the answer is `202 Accepted` with the status URL.

use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError,
};
use durable_http::{http_start, ClientExt, DurableClient, HttpRequest, HttpResult};

/// Greets one city.
#[activity]
pub async fn say_hello(city: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {city}!"))
}

/// Greets every city, one after another.
#[orchestrator]
pub async fn hello_cities(
    ctx: OrchestrationContext,
    cities: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::new();
    for city in cities {
        out.push(ctx.call_activity(say_hello, city).await?);
    }
    Ok(out)
}

/// `POST /api/hello` with `["Tokyo","Seattle"]`: starts `hello_cities`.
#[http_start(route = "/api/hello", method = "POST")]
pub async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
    let cities: Vec<String> = req.json()?;
    let id = client.start(hello_cities, cities).await?;
    Ok(client.check_status_response(&req, &id))
}
