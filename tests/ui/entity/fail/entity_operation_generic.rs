use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity]
impl Counter {
    pub fn set<T: Into<i64>>(&mut self, v: T) {
        self.value = v.into();
    }
}
fn main() {}
