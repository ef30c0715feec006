#[durable_core::entity]
#[derive(Default)]
pub struct Counter {
    value: i64,
}
fn main() {}
