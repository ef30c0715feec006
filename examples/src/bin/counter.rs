//! Serves the counter scenario (and every other example) on 127.0.0.1:7071.

use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
