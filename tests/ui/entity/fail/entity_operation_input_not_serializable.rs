use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
pub struct Command;
#[entity]
impl Counter {
    pub fn apply(&mut self, cmd: Command) {
        let _ = cmd;
    }
}
fn main() {}
