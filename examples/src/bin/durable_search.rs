//! Durable search: open http://localhost:7071/api/search and type a query, or
//!
//! ```sh
//! curl -s -X POST "localhost:7071/api/search/start?q=durable%20functions"
//! curl -i localhost:7071/api/search/results/<id>
//! curl -s localhost:7071/api/instances/<watcherId>
//! ```

// Linking the library registers its functions and endpoints.
use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
