use durable_http::{http_start, DurableClient, HttpRequest, HttpResult};
#[http_start(method = "POST")]
async fn start(client: DurableClient, req: HttpRequest) -> HttpResult {
    let _ = (client, req);
    Err(durable_http::HttpError::not_found("x"))
}
fn main() {}
