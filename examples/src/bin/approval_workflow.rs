//! The file-based approval workflow: drop files into ./approval-workflow/requests
//! (APPROVAL_DIR), open the email (sent through the SMTP server APPROVAL_SMTP names, e.g.
//! `localhost:25`, and copied to outbox/), click approve or reject (or wait
//! APPROVAL_TIMEOUT_SECS), and the file moves to approved/ or rejected/.
//!
//! ```sh
//! APPROVAL_TIMEOUT_SECS=120 cargo run --bin approval_workflow &
//! echo meow > /tmp/whiskers.jpg && mv /tmp/whiskers.jpg approval-workflow/requests/
//! grep -o 'http[^"]*approve' approval-workflow/outbox/*.html | head -1 | xargs curl -s
//! ls approval-workflow/approved
//! ```

use durable_examples::approval_workflow::{spawn_watcher, WorkflowConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = WorkflowConfig::from_env()?;
    cfg.ensure_dirs()?;
    let host = durable_http::Host::from_env()?;
    let watcher = spawn_watcher(host.client(), cfg.clone());
    eprintln!(
        "approval workflow: drop files into {} (links point at {}, decisions wait {} s)",
        cfg.root.join("requests").display(),
        cfg.base_url,
        cfg.timeout.as_secs()
    );
    host.serve().await?;
    watcher.abort();
    Ok(())
}
