pub struct NotSerde;
#[durable_core::activity]
async fn take(x: NotSerde) -> u8 {
    let _ = x;
    1
}
fn main() {}
