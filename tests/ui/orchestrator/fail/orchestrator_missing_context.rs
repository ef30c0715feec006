#[durable_core::orchestrator]
async fn hello(cities: Vec<String>) -> Result<(), String> {
    let _ = cities;
    Ok(())
}
fn main() {}
