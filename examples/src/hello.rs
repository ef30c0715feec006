//! Hello cities: the shortest real path from nothing to a running orchestration. `POST
//! /api/hello` with a JSON list of cities starts `hello_cities`, which greets each city
//! with the `say_hello` activity; the answer is `202 Accepted` with the status URL.
//!
//! The endpoint is public and each city costs an activity, so it bounds the work one
//! request can ask for: at most [`MAX_CITIES`] cities of at most [`MAX_CITY_CHARS`]
//! characters each.

use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError,
};
use durable_http::{http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResult};

/// Most cities one request may greet.
pub const MAX_CITIES: usize = 100;
/// Longest city name, in characters.
pub const MAX_CITY_CHARS: usize = 100;

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

/// `POST /api/hello` with `["Tokyo","Seattle"]`: starts `hello_cities`; 400 naming the
/// limit for more than [`MAX_CITIES`] cities or a name over [`MAX_CITY_CHARS`].
#[http_start(route = "/api/hello", method = "POST")]
pub async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
    let cities: Vec<String> = req.json()?;
    if cities.len() > MAX_CITIES {
        return Err(HttpError::bad_request(format!(
            "give at most {MAX_CITIES} cities, got {}",
            cities.len()
        )));
    }
    if let Some(i) = cities
        .iter()
        .position(|c| c.chars().count() > MAX_CITY_CHARS)
    {
        return Err(HttpError::bad_request(format!(
            "city {i} is longer than {MAX_CITY_CHARS} characters"
        )));
    }
    let id = client.start(hello_cities, cities).await?;
    Ok(client.check_status_response(&req, &id))
}
