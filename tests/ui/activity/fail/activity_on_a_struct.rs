#[durable_core::activity]
pub struct Greeter;
fn main() {}
