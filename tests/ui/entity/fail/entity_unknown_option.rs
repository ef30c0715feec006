use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity(nam = "counter")]
impl Counter {
    pub fn get(&self) -> i64 {
        self.value
    }
}
fn main() {}
