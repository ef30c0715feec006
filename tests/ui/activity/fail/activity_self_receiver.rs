struct S;
impl S {
    #[durable_core::activity]
    async fn go(&self) -> u8 {
        1
    }
}
fn main() {}
