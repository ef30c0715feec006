//! The README's "your own app": expense approvals on 127.0.0.1:7071 (DURABLE_ADDR).
//!
//! ```sh
//! export DURABLE_KEY=my-management-key-0123
//! cargo run --bin expenses &
//! curl -i -X POST localhost:7071/api/expenses -d '{"who":"ada","cents":4200}'
//! curl -s localhost:7071/api/expenses/<id>/stage
//! curl -i -X POST "localhost:7071/runtime/webhooks/durabletask/instances/<id>/raiseEvent/decision" \
//!      -H "x-functions-key: $DURABLE_KEY" -H 'content-type: application/json' -d true
//! ```

// Linking the library registers its functions and endpoints.
use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
