// Several inputs: one error, naming the type, at the attribute.
pub struct NotSerde;
#[durable_core::activity]
async fn take(n: u32, x: NotSerde) -> u8 {
    let _ = (n, x);
    1
}
fn main() {}
