//! Small pieces the scenarios share: a demo mailbox that stands in for an email service
//! (messages are printed and kept in memory; `GET /api/mailbox` lists them), HTML and URL
//! escaping, and the "raise an event only on a running instance of this orchestrator"
//! check that public links (approve, reject, stop) need.

use std::sync::Mutex;

use durable_core::Orchestrator;
use durable_core::{DurableClient, RuntimeStatus, StatusOptions};
use durable_http::{http_start, HttpError, HttpRequest, HttpResponse, HttpResult};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// A message "sent" by an activity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Email {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Links in the message (e.g. approve and reject), in order.
    #[serde(default)]
    pub links: Vec<String>,
}

fn mailbox() -> &'static Mutex<Vec<Email>> {
    static MAILBOX: Mutex<Vec<Email>> = Mutex::new(Vec::new());
    &MAILBOX
}

/// Delivers a message: prints it and keeps it for `GET /api/mailbox`.
pub fn deliver(email: Email) {
    eprintln!(
        "mail to {}: {}\n{}{}",
        email.to,
        email.subject,
        email.body,
        email
            .links
            .iter()
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    mailbox()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(email);
}

/// The messages delivered so far to `to` (all when `None`), oldest first.
pub fn messages(to: Option<&str>) -> Vec<Email> {
    mailbox()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|m| to.is_none_or(|t| m.to.eq_ignore_ascii_case(t)))
        .cloned()
        .collect()
}

/// `GET /api/mailbox[?to=address]`: the demo mailbox, oldest first.
#[http_start(route = "/api/mailbox", method = "GET")]
pub async fn read_mailbox(_client: DurableClient, req: HttpRequest) -> HttpResult {
    Ok(HttpResponse::json(
        StatusCode::OK,
        &messages(req.query("to")),
    ))
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or path component.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Raises `event` on instance `id` only when it is an instance of `orchestrator` and
/// still waiting (Pending, Running or Suspended): 404 for an unknown id or an instance of
/// another orchestrator (a public link acts only on what it owns), 410 Gone once it has
/// finished (also when it finishes between the check and the raise). `what` names the
/// instance in messages, e.g. "approval".
pub async fn raise_if_running<O: Orchestrator>(
    client: &DurableClient,
    _orchestrator: O,
    id: &str,
    what: &str,
    event: &str,
    data: &impl Serialize,
) -> Result<(), HttpError> {
    let status = match client
        .get_status(
            id,
            StatusOptions {
                show_input: false,
                show_history: false,
            },
        )
        .await
    {
        Ok(Some(s)) if s.state.name == O::NAME => s.status(),
        Ok(_) | Err(durable_core::Error::InvalidArgument(_)) => {
            return Err(HttpError::not_found(format!("no {what} with id '{id}'")))
        }
        Err(e) => return Err(e.into()),
    };
    let gone = |status: RuntimeStatus| {
        HttpError::new(
            StatusCode::GONE,
            format!(
                "{what} '{id}' is no longer waiting for a decision (it is {})",
                status.as_str()
            ),
        )
    };
    if status.is_terminal() {
        return Err(gone(status));
    }
    match client.raise_event(id, event, data).await {
        Ok(()) => Ok(()),
        Err(durable_core::Error::InvalidStatus { status, .. }) => Err(gone(status)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            html_escape("<b>\"a\" & 'b'</b>"),
            "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;"
        );
        assert_eq!(url_encode("rust lang/é"), "rust%20lang%2F%C3%A9");
    }
}
