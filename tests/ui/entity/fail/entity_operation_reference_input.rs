use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn label(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.value)
    }
}
fn main() {}
