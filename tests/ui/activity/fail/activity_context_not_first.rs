use durable_core::ActivityContext;
#[durable_core::activity]
async fn greet(name: String, ctx: ActivityContext) -> String {
    let _ = ctx;
    name
}
fn main() {}
