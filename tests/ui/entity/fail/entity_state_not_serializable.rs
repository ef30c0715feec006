#[derive(Default)]
pub struct Counter {
    value: i64,
}
#[durable_core::entity]
impl Counter {
    pub fn get(&self) -> i64 {
        self.value
    }
}
fn main() {}
