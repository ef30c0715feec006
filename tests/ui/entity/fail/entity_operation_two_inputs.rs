use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn add(&mut self, a: i64, b: i64) {
        self.value += a + b;
    }
}
fn main() {}
