#[durable_core::activity]
async unsafe fn greet(name: String) -> String {
    name
}
fn main() {}
