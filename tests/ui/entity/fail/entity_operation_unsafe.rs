use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub unsafe fn reset(&mut self) {
        self.value = 0;
    }
}
fn main() {}
