#[durable_core::activity]
async extern "C" fn greet(n: u8) -> u8 {
    n
}
fn main() {}
