#[durable_core::entity]
impl [u8; 4] {
    pub fn first(&self) -> u8 {
        self[0]
    }
}
fn main() {}
