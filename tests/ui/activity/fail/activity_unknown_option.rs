#[durable_core::activity(nme = "x")]
async fn greet(name: String) -> String {
    name
}
fn main() {}
