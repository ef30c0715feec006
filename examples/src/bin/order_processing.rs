//! The patterns walkthrough: order chaining, fan-out/fan-in, an eternal monitor and a
//! human approval, on 127.0.0.1:7071 (DURABLE_ADDR) with state in ./durable.db.
//!
//! ```sh
//! curl -i -X POST localhost:7071/api/orders -d '{"id":"A-1001","email":"ada@example.com","items":[{"sku":"widget","quantity":2}],"card":"4242 4242 4242 4242"}'
//! curl -i -X POST localhost:7071/api/fan-out -d '["Task1","Task2","Task3"]'
//! curl -i -X POST localhost:7071/api/monitors -d '{"url":"http://127.0.0.1:7071/api/demo/services/web/health","intervalSeconds":5}'
//! curl -i -X POST localhost:7071/api/approvals -d '{"document":"Q3 budget","approver":"boss@example.com","timeoutSeconds":300}'
//! curl -s localhost:7071/api/mailbox
//! ```

// Linking the library registers its functions and endpoints.
use durable_examples as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
