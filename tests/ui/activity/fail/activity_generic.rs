#[durable_core::activity]
async fn echo<T: Clone>(x: T) -> T {
    x
}
fn main() {}
