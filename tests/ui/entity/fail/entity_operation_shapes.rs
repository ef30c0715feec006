use durable_core::entity;
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct S;
#[entity(nam = "x")]
impl S {
    pub fn new() -> Self {
        S
    }
    pub fn two(&mut self, a: u8, b: u8) {
        let _ = (a, b);
    }
    pub fn by_ref(&self, s: &str) {
        let _ = s;
    }
}
fn main() {}
