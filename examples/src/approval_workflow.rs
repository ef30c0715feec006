//! The approval workflow (seed 000, second half): requests are files.
//!
//! A file dropped into `requests/` (under `APPROVAL_DIR`, default `./approval-workflow`)
//! starts one `approval_workflow` instance: it mails the approver an approve and a reject
//! link over SMTP (to the server `APPROVAL_SMTP` names, with [`lettre`]; a copy goes to
//! `outbox/<instance>.html`, the only copy when no server is configured), then waits for
//! whichever comes first, the approver's click or a durable timer (`APPROVAL_TIMEOUT_SECS`,
//! default one day; a timeout rejects). Then it moves the file to `approved/` or
//! `rejected/`.
//!
//! The links hit `GET /api/approval-requests/{id}/approve` (or `/reject`), which checks
//! the instance is an `approval_workflow` still waiting before raising the event: 404 for
//! an unknown id or another orchestrator's instance, 410 once it has been decided.
//!
//! The folder watcher ([`spawn_watcher`]) scans `requests/` and derives each instance id
//! from the file's name, size and modification time, so a restart never starts a second
//! instance for the same file. Write files elsewhere and move them in, so the watcher
//! never sees half a file; names starting with `.` or ending in `.tmp` or `.part` are
//! ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use durable_core::{
    activity, orchestrator, ActivityError, DurableClient, OrchestrationContext, OrchestrationError,
    StartOptions,
};
use durable_http::{http_start, HttpRequest, HttpResult};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{html_escape, url_encode};
use crate::order_processing::approval::{decision_before, deliver_decision};

/// Where new requests are dropped.
pub const REQUESTS: &str = "requests";
/// Where approved requests end.
pub const APPROVED: &str = "approved";
/// Where rejected (or timed-out) requests end.
pub const REJECTED: &str = "rejected";
/// Where approval emails are written.
pub const OUTBOX: &str = "outbox";

/// How the workflow is set up.
#[derive(Clone, Debug)]
pub struct WorkflowConfig {
    /// The folder holding `requests/`, `approved/`, `rejected/` and `outbox/`.
    pub root: PathBuf,
    /// The base URL of this host, for the links.
    pub base_url: String,
    /// How long a request waits for a decision.
    pub timeout: Duration,
    /// Who approves.
    pub approver: String,
    /// How often `requests/` is scanned.
    pub scan_every: Duration,
    /// The SMTP server approval mail goes to; None writes it to the outbox only.
    pub smtp: Option<SmtpServer>,
}

/// An SMTP server to send approval mail through (plain SMTP, as to a local relay).
/// Credentials, when the server wants them, come from `APPROVAL_SMTP_USER` and
/// `APPROVAL_SMTP_PASSWORD` when the mail is sent, never through a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpServer {
    /// Host name or address.
    pub host: String,
    /// Port (25, or 587 for submission).
    pub port: u16,
    /// The sender address.
    pub from: String,
}

impl SmtpServer {
    /// Parses `host:port` (the port defaults to 25).
    pub fn parse(server: &str, from: &str) -> Result<Self, String> {
        let server = server.trim();
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("APPROVAL_SMTP '{server}': '{p}' is not a port"))?,
            ),
            None => (server, 25),
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(format!("APPROVAL_SMTP '{server}' is not host:port"));
        }
        from.parse::<lettre::message::Mailbox>()
            .map_err(|e| format!("APPROVAL_MAIL_FROM '{from}': {e}"))?;
        Ok(Self {
            host: host.to_string(),
            port,
            from: from.to_string(),
        })
    }
}

impl WorkflowConfig {
    /// From the environment: `APPROVAL_DIR` (default `./approval-workflow`),
    /// `APPROVAL_BASE_URL` (default the host's `DURABLE_PUBLIC_URL`, else `http://` +
    /// `DURABLE_ADDR`: configuration, never a request's headers), `APPROVAL_TIMEOUT_SECS`
    /// (default 86400), `APPROVER` (default `approver@example.com`), `APPROVAL_SMTP`
    /// (`host:port` of the SMTP server; unset: outbox only) and `APPROVAL_MAIL_FROM`
    /// (default `approvals@example.com`).
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let timeout = match var("APPROVAL_TIMEOUT_SECS") {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("APPROVAL_TIMEOUT_SECS '{v}' is not a number of seconds"))?,
            None => 86_400,
        };
        let addr = var("DURABLE_ADDR").unwrap_or_else(|| durable_http::DEFAULT_ADDR.to_string());
        let from = var("APPROVAL_MAIL_FROM").unwrap_or_else(|| "approvals@example.com".into());
        let smtp = var("APPROVAL_SMTP")
            .map(|s| SmtpServer::parse(&s, &from))
            .transpose()?;
        Ok(WorkflowConfig {
            root: var("APPROVAL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("approval-workflow")),
            base_url: var("APPROVAL_BASE_URL")
                .or_else(|| var("DURABLE_PUBLIC_URL"))
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| format!("http://{addr}")),
            timeout: Duration::from_secs(timeout),
            approver: var("APPROVER").unwrap_or_else(|| "approver@example.com".into()),
            scan_every: Duration::from_millis(500),
            smtp,
        })
    }

    /// Creates the four folders.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in [REQUESTS, APPROVED, REJECTED, OUTBOX] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }
}

/// The input of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestInput {
    /// The workflow folder.
    pub root: String,
    /// The file's name in `requests/`.
    pub file: String,
    /// Who approves.
    pub approver: String,
    /// Base URL for the links.
    pub base_url: String,
    /// Seconds to wait for the decision.
    pub timeout_seconds: u64,
    /// Where the approval mail goes (None: the outbox only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpServer>,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestOutcome {
    /// The file.
    pub file: String,
    /// `Approved` or `Rejected`.
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// Where the file is now, relative to the workflow folder.
    pub moved_to: String,
}

/// The approval email, written to the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalEmail {
    /// The workflow folder.
    pub root: String,
    /// The instance, which names the email file.
    pub instance_id: String,
    /// The approver.
    pub to: String,
    /// The request's file.
    pub file: String,
    /// The approve link.
    pub approve: String,
    /// The reject link.
    pub reject: String,
    /// The SMTP server to send it through (None: the outbox only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpServer>,
}

/// A move of a request to its final folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The workflow folder.
    pub root: String,
    /// The file's name.
    pub file: String,
    /// `approved` or `rejected`.
    pub to: String,
}

/// A plain file name: no folders, not hidden.
fn check_name(file: &str) -> Result<(), ActivityError> {
    let bad = file.is_empty()
        || file.starts_with('.')
        || file.contains(['/', '\\'])
        || Path::new(file).file_name().and_then(|n| n.to_str()) != Some(file);
    if bad {
        return Err(ActivityError::non_retriable(format!(
            "'{file}' is not a plain file name"
        )));
    }
    Ok(())
}

/// The approval mail as sent over SMTP: plain text, one link a line.
pub fn approval_message(
    mail: &ApprovalEmail,
    from: &str,
) -> Result<lettre::Message, ActivityError> {
    let mailbox = |a: &str, what: &str| {
        a.parse::<lettre::message::Mailbox>()
            .map_err(|e| ActivityError::non_retriable(format!("{what} '{a}': {e}")))
    };
    lettre::Message::builder()
        .from(mailbox(from, "sender")?)
        .to(mailbox(&mail.to, "approver")?)
        .subject(format!("Approval request: {}", mail.file))
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(format!(
            "A new request, {file}, is waiting for your decision.\r\n\r\n\
             Approve: {approve}\r\n\
             Reject: {reject}\r\n",
            file = mail.file,
            approve = mail.approve,
            reject = mail.reject,
        ))
        .map_err(|e| ActivityError::non_retriable(format!("cannot build the mail: {e}")))
}

/// Sends `message` through `server` (credentials from `APPROVAL_SMTP_USER` and
/// `APPROVAL_SMTP_PASSWORD` when set). A refused or unreachable server fails the attempt;
/// the orchestration retries it.
async fn send_smtp(server: &SmtpServer, message: lettre::Message) -> Result<(), ActivityError> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.host)
        .port(server.port)
        .timeout(Some(Duration::from_secs(30)));
    if let (Ok(user), Ok(password)) = (
        std::env::var("APPROVAL_SMTP_USER"),
        std::env::var("APPROVAL_SMTP_PASSWORD"),
    ) {
        transport = transport.credentials(
            lettre::transport::smtp::authentication::Credentials::new(user, password),
        );
    }
    transport
        .build()
        .send(message)
        .await
        .map_err(|e| ActivityError::new(format!("SMTP {}:{}: {e}", server.host, server.port)))?;
    Ok(())
}

/// `SendApprovalEmail`: mails the approver through the configured SMTP server, and writes
/// a copy to `outbox/<instance>.html` (atomically: written aside, then renamed into
/// place). Activities run at least once: a retry after a lost result may mail twice.
#[activity(name = "SendApprovalEmail")]
pub async fn send_approval_email(mail: ApprovalEmail) -> Result<String, ActivityError> {
    check_name(&mail.file)?;
    if let Some(server) = &mail.smtp {
        send_smtp(server, approval_message(&mail, &server.from)?).await?;
    }
    let outbox = Path::new(&mail.root).join(OUTBOX);
    tokio::fs::create_dir_all(&outbox).await?;
    let file = html_escape(&mail.file);
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Approval request: {file}</title></head>\n\
         <body>\n<p>To: {to}</p>\n<p>Subject: Approval request: {file}</p>\n\
         <p>A new request, <b>{file}</b>, is waiting for your decision.</p>\n\
         <p><a href=\"{approve}\">Approve</a> &nbsp; <a href=\"{reject}\">Reject</a></p>\n</body></html>\n",
        to = html_escape(&mail.to),
        approve = html_escape(&mail.approve),
        reject = html_escape(&mail.reject),
    );
    let name = format!("{}.html", mail.instance_id);
    let tmp = outbox.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, html).await?;
    tokio::fs::rename(&tmp, outbox.join(&name)).await?;
    Ok(format!("{OUTBOX}/{name}"))
}

/// `MoveRequest`: moves `requests/<file>` to `approved/` or `rejected/`. Running it again
/// after it succeeded is fine (activities are at-least-once).
#[activity(name = "MoveRequest")]
pub async fn move_request(m: MoveRequest) -> Result<String, ActivityError> {
    check_name(&m.file)?;
    if m.to != APPROVED && m.to != REJECTED {
        return Err(ActivityError::non_retriable(format!(
            "'{}' is not a destination",
            m.to
        )));
    }
    let root = Path::new(&m.root);
    let from = root.join(REQUESTS).join(&m.file);
    let dir = root.join(&m.to);
    let to = dir.join(&m.file);
    tokio::fs::create_dir_all(&dir).await?;
    match tokio::fs::rename(&from, &to).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !tokio::fs::try_exists(&to).await.unwrap_or(false) {
                return Err(ActivityError::non_retriable(format!(
                    "{REQUESTS}/{} is gone and is not in {}/ either",
                    m.file, m.to
                )));
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(format!("{}/{}", m.to, m.file))
}

/// One request: email, wait for the decision or the timeout, move the file.
#[orchestrator]
pub async fn approval_workflow(
    ctx: OrchestrationContext,
    input: RequestInput,
) -> Result<RequestOutcome, OrchestrationError> {
    let link = |decision: &str| {
        format!(
            "{}/api/approval-requests/{}/{decision}",
            input.base_url,
            url_encode(ctx.instance_id())
        )
    };
    let mail = ApprovalEmail {
        root: input.root.clone(),
        instance_id: ctx.instance_id().to_string(),
        to: input.approver.clone(),
        file: input.file.clone(),
        approve: link("approve"),
        reject: link("reject"),
        smtp: input.smtp.clone(),
    };
    // A mail server that is briefly down is retried on durable timers.
    let retry = durable_core::RetryPolicy::new(5, Duration::from_secs(30));
    ctx.call_activity_with_retry(send_approval_email, &retry, mail)
        .await?;
    ctx.set_custom_status(json!({"file": input.file, "state": "AwaitingDecision"}));
    let mut timer = ctx.create_timer(Duration::from_secs(input.timeout_seconds));
    let decision = decision_before(&ctx, &mut timer, |e| {
        ctx.set_custom_status(json!({
            "file": input.file, "state": "AwaitingDecision", "ignored": e.to_string()
        }))
    })
    .await?;
    let (approved, reason) = match decision {
        Some(d) => {
            let verb = if d.approved { "approved" } else { "rejected" };
            (d.approved, format!("{verb} by {}", input.approver))
        }
        None => (
            false,
            format!("no decision within {} s", input.timeout_seconds),
        ),
    };
    let to = if approved { APPROVED } else { REJECTED };
    let moved_to = ctx
        .call_activity(
            move_request,
            MoveRequest {
                root: input.root.clone(),
                file: input.file.clone(),
                to: to.into(),
            },
        )
        .await?;
    let outcome = if approved { "Approved" } else { "Rejected" };
    ctx.set_custom_status(json!({"file": input.file, "state": outcome}));
    Ok(RequestOutcome {
        file: input.file,
        outcome: outcome.into(),
        reason,
        moved_to,
    })
}

/// `GET` (a clicked link) or `POST /api/approval-requests/{id}/approve` or `.../reject`:
/// 202 when the decision was delivered; 400 for another verb, 404 for an unknown id, 410
/// when the request was already decided or timed out.
#[http_start(
    route = "/api/approval-requests/{id}/{decision}",
    methods = "GET, POST"
)]
pub async fn decide_request(client: DurableClient, req: HttpRequest) -> HttpResult {
    deliver_decision(&client, &req, approval_workflow, "approval request").await
}

/// The instance id of a request file: the same for the same name, size and modification
/// time, so rescans and restarts never start a file twice.
pub fn instance_id_for(file: &str, len: u64, modified_nanos: u128) -> String {
    let key = format!("{file}\u{0}{len}\u{0}{modified_nanos}");
    format!(
        "req-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).simple()
    )
}

/// Scans `requests/` once and starts an instance for each file that has none; returns
/// the ids it started.
pub async fn scan_once(
    client: &DurableClient,
    cfg: &WorkflowConfig,
) -> std::io::Result<Vec<String>> {
    let mut started = Vec::new();
    let mut dir = tokio::fs::read_dir(cfg.root.join(REQUESTS)).await?;
    while let Some(entry) = dir.next_entry().await? {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
            continue;
        }
        let meta = match entry.metadata().await {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let id = instance_id_for(&name, meta.len(), modified);
        match client.get_state(&id).await {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => {
                eprintln!("approval workflow: cannot check {name}: {e}");
                continue;
            }
        }
        let input = RequestInput {
            root: cfg.root.to_string_lossy().into_owned(),
            file: name.clone(),
            approver: cfg.approver.clone(),
            base_url: cfg.base_url.clone(),
            timeout_seconds: cfg.timeout.as_secs().max(1),
            smtp: cfg.smtp.clone(),
        };
        match client
            .start_with(
                approval_workflow,
                input,
                StartOptions::with_instance_id(&id),
            )
            .await
        {
            Ok(id) => {
                eprintln!("approval workflow: {name} -> instance {id}");
                started.push(id);
            }
            Err(durable_core::Error::InstanceExists { .. }) => {}
            Err(e) => eprintln!("approval workflow: cannot start {name}: {e}"),
        }
    }
    Ok(started)
}

/// Scans `requests/` every `cfg.scan_every` until the task is aborted.
pub fn spawn_watcher(client: DurableClient, cfg: WorkflowConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = scan_once(&client, &cfg).await {
                eprintln!(
                    "approval workflow: cannot scan {}: {e}",
                    cfg.root.join(REQUESTS).display()
                );
            }
            tokio::time::sleep(cfg.scan_every).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_file_version() {
        let a = instance_id_for("cat.jpg", 10, 5);
        assert_eq!(a, instance_id_for("cat.jpg", 10, 5));
        assert_ne!(a, instance_id_for("cat.jpg", 11, 5));
        assert_ne!(a, instance_id_for("dog.jpg", 10, 5));
        assert!(durable_core::client::validate_instance_id(&a).is_ok());
    }

    #[test]
    fn smtp_servers_are_host_and_port() {
        let s = SmtpServer::parse("mail.test:2525", "a@b.test").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("mail.test", 2525));
        assert_eq!(SmtpServer::parse("mail.test", "a@b.test").unwrap().port, 25);
        for (server, from, why) in [
            ("mail.test:0", "a@b.test", "is not a port"),
            ("mail.test:smtp", "a@b.test", "is not a port"),
            (":25", "a@b.test", "is not host:port"),
            ("mail test:25", "a@b.test", "is not host:port"),
            ("mail.test:25", "nobody", "APPROVAL_MAIL_FROM 'nobody'"),
        ] {
            let e = SmtpServer::parse(server, from).unwrap_err();
            assert!(e.contains(why), "{server} {from}: {e}");
        }
    }

    #[test]
    fn only_plain_names_are_accepted() {
        assert!(check_name("cat.jpg").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "a\\b", ".."] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
