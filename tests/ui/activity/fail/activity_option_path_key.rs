#[durable_core::activity(durable::name = "x")]
async fn greet(name: String) -> String {
    name
}
fn main() {}
