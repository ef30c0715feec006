use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResult};
#[http_start(route = "/api/hello")]
async fn start<T>(client: DurableClient, req: HttpRequest) -> HttpResult {
    let _ = (client, req);
    Err(HttpError::not_found("x"))
}
fn main() {}
