#[durable_core::activity(name = greet_v2)]
async fn greet(name: String) -> String {
    name
}
fn main() {}
