//! Serves `POST /api/hello` and the status endpoints on 127.0.0.1:7071 (DURABLE_ADDR),
//! keeping state in ./durable.db (DURABLE_DB).
//!
//! ```sh
//! curl -i -X POST localhost:7071/api/hello -d '["Tokyo","Seattle","London"]'
//! curl -s localhost:7071/api/instances/<id>
//! ```

// Linking the library registers its functions and endpoints.
use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
