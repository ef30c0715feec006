#[durable_core::activity(name)]
async fn greet(name: String) -> String {
    name
}
fn main() {}
