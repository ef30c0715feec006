#[durable_core::activity]
const fn greet(n: u8) -> u8 {
    n
}
fn main() {}
