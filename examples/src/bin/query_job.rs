//! The async query job over HTTP; seeds ./audit.db (QUERY_JOB_DB) on first start.
//!
//! ```sh
//! curl -s "localhost:7071/api/submit/query?s=10/02/2021&e=10/05/2021"
//! curl -s localhost:7071/api/status/<id>
//! ```

use durable_examples::query_job;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    query_job::seed_audit_rows(&query_job::audit_db())?;
    durable_http::Host::from_env()?.serve().await?;
    Ok(())
}
