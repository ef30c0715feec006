use durable_http::{http_start, DurableClient, HttpResult};
#[http_start(route = "api/x", method = "FETCH", rout = "/y")]
fn start(client: DurableClient) -> HttpResult {
    let _ = client;
    Err(durable_http::HttpError::not_found("x"))
}
fn main() {}
