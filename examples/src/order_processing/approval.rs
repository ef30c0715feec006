//! Human interaction: `POST /api/approvals` with `{"document": ..., "approver": ...,
//! "timeoutSeconds": 3600}` starts `approval`, which mails the approver a request with an
//! approve and a reject link (the `SendApprovalRequest` activity; the demo mailbox at
//! `GET /api/mailbox` shows it), then waits for whichever comes first: the decision, an
//! external event, or a durable timer. A timeout ends it as `TimedOut`. Either way the
//! `SendApprovalOutcome` activity mails the result. A decision event with badly shaped
//! data is rejected (the custom status says so) and the wait goes on.
//!
//! The links hit `GET /api/approvals/{id}/approve` (or `/reject`), which checks the
//! instance is an `approval` still waiting before raising the event: 404 for an unknown
//! id or an instance of another orchestrator, 410 once it has ended.

use std::time::Duration;

use durable_core::Orchestrator;
use durable_core::{
    activity, orchestrator, race, ActivityError, DurableFuture, Either, OrchestrationContext,
    OrchestrationError, TaskError,
};
use durable_http::{
    http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{deliver, raise_if_running, url_encode, Email};

/// The external event carrying the decision.
pub const DECISION_EVENT: &str = "ApprovalDecision";
/// Longest wait for a decision: 30 days.
pub const MAX_TIMEOUT_SECONDS: u64 = 30 * 86_400;

/// What `POST /api/approvals` takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequest {
    /// What is to be approved.
    pub document: String,
    /// Who decides (an email address).
    pub approver: String,
    /// How long to wait for the decision, 1 s to 30 days (default one day).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    86_400
}

/// The orchestration's input: the request and where its links point.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalInput {
    /// The request.
    pub request: ApprovalRequest,
    /// The host's base URL, for the links.
    pub base_url: String,
}

/// The decision, as raised by the links.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or rejected.
    pub approved: bool,
}

/// How an approval ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalOutcome {
    /// What was to be approved.
    pub document: String,
    /// `Approved`, `Rejected` or `TimedOut`.
    pub outcome: String,
}

/// The approval request mail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalMail {
    /// The approver.
    pub to: String,
    /// The document.
    pub document: String,
    /// The approve link.
    pub approve: String,
    /// The reject link.
    pub reject: String,
}

/// `SendApprovalRequest`: mails the approver the two links.
#[activity(name = "SendApprovalRequest")]
pub async fn send_approval_request(mail: ApprovalMail) -> Result<(), ActivityError> {
    deliver(Email {
        to: mail.to,
        subject: format!("Approval needed: {}", mail.document),
        body: format!(
            "Please approve or reject '{}'. Approve: {} Reject: {}",
            mail.document, mail.approve, mail.reject
        ),
        links: vec![mail.approve, mail.reject],
    });
    Ok(())
}

/// `SendApprovalOutcome`: mails the approver how it ended.
#[activity(name = "SendApprovalOutcome")]
pub async fn send_approval_outcome(
    to: String,
    outcome: ApprovalOutcome,
) -> Result<(), ActivityError> {
    deliver(Email {
        to,
        subject: format!("{}: {}", outcome.document, outcome.outcome),
        body: format!("'{}' ended as {}.", outcome.document, outcome.outcome),
        links: Vec::new(),
    });
    Ok(())
}

/// Sends the request, then waits for the decision or the timeout, whichever comes first.
#[orchestrator]
pub async fn approval(
    ctx: OrchestrationContext,
    input: ApprovalInput,
) -> Result<ApprovalOutcome, OrchestrationError> {
    let r = input.request;
    let link = |decision: &str| {
        format!(
            "{}/api/approvals/{}/{decision}",
            input.base_url,
            url_encode(ctx.instance_id())
        )
    };
    let mail = ApprovalMail {
        to: r.approver.clone(),
        document: r.document.clone(),
        approve: link("approve"),
        reject: link("reject"),
    };
    ctx.call_activity(send_approval_request, mail).await?;
    ctx.set_custom_status("AwaitingApproval");
    let mut timeout = ctx.create_timer(Duration::from_secs(r.timeout_seconds));
    let decision = decision_before(&ctx, &mut timeout, |e| {
        ctx.set_custom_status(format!(
            "AwaitingApproval (ignored a malformed decision: {e})"
        ))
    })
    .await?;
    let outcome = match decision {
        Some(d) if d.approved => "Approved",
        Some(_) => "Rejected",
        None => "TimedOut",
    };
    ctx.set_custom_status(outcome);
    let outcome = ApprovalOutcome {
        document: r.document,
        outcome: outcome.into(),
    };
    ctx.call_activity(send_approval_outcome, (r.approver, outcome.clone()))
        .await?;
    Ok(outcome)
}

/// Waits for the decision until `deadline` fires (`None`). A decision event whose data is
/// not a [`Decision`] (raised by hand through the management API, say) does not end the
/// wait: `rejected` hears about it and the wait goes on, the deadline unchanged. Replays
/// reject the same events, since events are delivered in history order.
pub async fn decision_before(
    ctx: &OrchestrationContext,
    deadline: &mut DurableFuture<()>,
    mut rejected: impl FnMut(&TaskError),
) -> Result<Option<Decision>, OrchestrationError> {
    loop {
        let decision = ctx.wait_for_external_event::<Decision>(DECISION_EVENT);
        match race(decision, &mut *deadline).await {
            Either::Left(Ok(d)) => return Ok(Some(d)),
            Either::Left(Err(e)) if e.is_decode_error() => rejected(&e),
            Either::Left(Err(e)) => return Err(e.into()),
            Either::Right(()) => return Ok(None),
        }
    }
}

/// `POST /api/approvals` with `{"document", "approver", "timeoutSeconds"}`: 202 with the
/// status URL.
#[http_start(route = "/api/approvals", method = "POST")]
pub async fn start_approval(client: DurableClient, req: HttpRequest) -> HttpResult {
    let r: ApprovalRequest = req.json()?;
    if r.document.trim().is_empty() || r.document.len() > 200 {
        return Err(HttpError::bad_request(
            "document must be 1 to 200 characters",
        ));
    }
    if !r.approver.contains('@') {
        return Err(HttpError::bad_request(format!(
            "approver '{}' is not an email address",
            r.approver
        )));
    }
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&r.timeout_seconds) {
        return Err(HttpError::bad_request(format!(
            "timeoutSeconds must be 1 to {MAX_TIMEOUT_SECONDS}"
        )));
    }
    let input = ApprovalInput {
        request: r,
        base_url: req.base_url().to_string(),
    };
    let id = client.start(approval, input).await?;
    Ok(client.check_status_response(&req, &id))
}

/// `GET` (a clicked link) or `POST /api/approvals/{id}/approve` or `.../reject`: 202 when
/// the decision was delivered; 400 for another verb, 404 for an unknown id, 410 when the
/// approval has already ended.
#[http_start(route = "/api/approvals/{id}/{decision}", methods = "GET, POST")]
pub async fn decide_approval(client: DurableClient, req: HttpRequest) -> HttpResult {
    deliver_decision(&client, &req, approval, "approval").await
}

/// Raises the decision named by the request's `{decision}` path parameter (`approve` or
/// `reject`) on the instance `{id}` while it still waits, if it is an instance of
/// `orchestrator` (404 otherwise); `what` names the instance in error messages. Shared by
/// every approve/reject link endpoint.
pub async fn deliver_decision<O: Orchestrator>(
    client: &DurableClient,
    req: &HttpRequest,
    orchestrator: O,
    what: &str,
) -> HttpResult {
    let id = req.param("id").unwrap_or_default().to_string();
    let approved = match req.param("decision").unwrap_or_default() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(HttpError::bad_request(format!(
                "'{other}' is not a decision: use approve or reject"
            )))
        }
    };
    raise_if_running(
        client,
        orchestrator,
        &id,
        what,
        DECISION_EVENT,
        &Decision { approved },
    )
    .await?;
    Ok(HttpResponse::json(
        StatusCode::ACCEPTED,
        &json!({"id": id, "decision": if approved { "approve" } else { "reject" }}),
    ))
}
