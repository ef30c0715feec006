use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn show(&self) -> impl std::fmt::Display {
        self.value
    }
}
fn main() {}
