use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResult};
pub struct Api;
impl Api {
    #[http_start(route = "/api/hello")]
    async fn start(&self, req: HttpRequest) -> HttpResult {
        let _ = req;
        Err(HttpError::not_found("x"))
    }
}
fn main() {
    let _: Option<DurableClient> = None;
}
