#[durable_core::activity("say_hello")]
async fn greet(name: String) -> String {
    name
}
fn main() {}
