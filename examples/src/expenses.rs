//! Your own app: the README's "your own app" section, compiled and tested. An expense is
//! submitted, the manager is notified, and the orchestration waits up to a week for a
//! `decision` event (raised with the management API, e.g. with curl); a custom route with a
//! path parameter reports the stage from the custom status.

use std::time::Duration;

use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError, StatusOptions,
};
use durable_http::{
    http_start, ClientExt, DurableClient, HttpRequest, HttpResponse, HttpResult, StatusCode,
};
use serde::{Deserialize, Serialize};

/// An expense to approve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Expense {
    /// Who spent it.
    pub who: String,
    /// How much, in cents.
    pub cents: u64,
}

/// Tells the manager (here: the log).
#[activity]
pub async fn notify_manager(e: Expense) -> Result<(), ActivityError> {
    if e.cents == 0 {
        Err(format!("{} submitted an empty expense", e.who))?;
    }
    println!("{} asks for {} cents", e.who, e.cents);
    Ok(())
}

/// Waits a week for the manager's `decision` (true approves).
#[orchestrator]
pub async fn expense_approval(
    ctx: OrchestrationContext,
    e: Expense,
) -> Result<String, OrchestrationError> {
    ctx.call_activity(notify_manager, e).await?;
    ctx.set_custom_status("WaitingForManager");
    let week = Duration::from_secs(7 * 86_400);
    let approved = ctx
        .wait_for_external_event_with_timeout::<bool>("decision", week)
        .await
        .unwrap_or(false); // no answer within a week: rejected
    let outcome = if approved { "Approved" } else { "Rejected" };
    ctx.set_custom_status(outcome);
    Ok(outcome.to_string())
}

/// `POST /api/expenses`: starts an approval; 202 with the status URL.
#[http_start(route = "/api/expenses", method = "POST")]
pub async fn submit_expense(client: DurableClient, req: HttpRequest) -> HttpResult {
    let e: Expense = req.json()?; // a bad body answers 400 saying what is wrong
    let id = client.start(expense_approval, e).await?;
    Ok(client.check_status_response(&req, &id))
}

/// `GET /api/expenses/{id}/stage`: the stage from the custom status; 404 for an unknown id.
#[http_start(route = "/api/expenses/{id}/stage", method = "GET")]
pub async fn expense_stage(client: DurableClient, req: HttpRequest) -> HttpResult {
    let id = req.param("id").unwrap_or_default();
    let status = client
        .status_or_not_found(id, StatusOptions::default())
        .await?;
    let stage: Option<String> = status.custom_status().ok().flatten();
    Ok(HttpResponse::json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "stage": stage, "runtimeStatus": status.status().as_str() }),
    ))
}
