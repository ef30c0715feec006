use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn add(&mut self, n: i64, ctx: &durable_core::EntityContext<Self>) {
        let _ = ctx;
        self.value += n;
    }
}
fn main() {}
