#[durable_core::activity(timeout = "30 seconds")]
async fn greet(name: String) -> String {
    name
}
#[durable_core::activity(timeout = "0s")]
async fn wave(name: String) -> String {
    name
}
fn main() {}
