use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn new() -> Self {
        Counter { value: 0 }
    }
}
fn main() {}
