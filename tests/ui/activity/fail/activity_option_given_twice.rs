#[durable_core::activity(name = "a", name = "b")]
async fn greet(name: String) -> String {
    name
}
fn main() {}
