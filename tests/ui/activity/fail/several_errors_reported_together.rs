#[durable_core::activity(nme = "x", name = "")]
fn greet<T>(name: &str) -> String {
    name.to_string()
}
fn main() {}
