#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Bag<T> {
    items: Vec<T>,
}
#[durable_core::entity]
impl<T> Bag<T> {
    pub fn len(&self) -> usize {
        self.items.len()
    }
}
fn main() {}
