#![deny(warnings)]
use durable_http::{http_start, DurableClient, HttpRequest, HttpResponse, HttpResult};

#[http_start(route = "/api/items/{id}", methods = "GET, DELETE")]
async fn item(client: DurableClient, req: HttpRequest) -> HttpResult {
    let _ = client;
    Ok(HttpResponse::text(http::StatusCode::OK, req.param("id").unwrap_or_default()))
}

#[http_start(route = "/api/ping")]
async fn ping(_client: DurableClient, _req: HttpRequest) -> HttpResponse {
    HttpResponse::text(http::StatusCode::OK, "pong")
}

fn main() {
    let _ = (item, ping);
}
