use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
pub struct Snapshot;
#[entity]
impl Counter {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot
    }
}
fn main() {}
