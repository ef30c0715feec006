#[durable_core::activity]
fn say_hello(city: String) -> String {
    city
}
fn main() {}
