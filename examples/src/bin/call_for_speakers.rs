//! Call for speakers over HTTP.
//!
//! ```sh
//! curl -i -X POST localhost:7071/api/submissions \
//!   -d '{"speaker":"Ada","email":"ada@example.com","title":"Durable workflows in Rust","abstract":"How replay makes long work survive crashes"}'
//! curl -s localhost:7071/api/instances/<id>     # customStatus shows the stage
//! ```

use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
