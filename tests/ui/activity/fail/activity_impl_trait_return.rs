#[durable_core::activity]
async fn show(x: u8) -> impl std::fmt::Display {
    x
}
fn main() {}
