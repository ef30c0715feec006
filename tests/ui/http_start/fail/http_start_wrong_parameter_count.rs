use durable_http::{http_start, DurableClient, HttpError, HttpResult};
#[http_start(route = "/api/hello")]
async fn start(client: DurableClient) -> HttpResult {
    let _ = client;
    Err(HttpError::not_found("x"))
}
fn main() {}
