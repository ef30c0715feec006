use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}
#[entity(nam = "x")]
impl Counter {
    pub fn new() -> Self {
        Counter { value: 0 }
    }
    pub fn two(&mut self, a: u8, b: u8) {
        let _ = (a, b);
    }
    pub fn by_ref(&self, s: &str) {
        let _ = s;
    }
}
fn main() {}
