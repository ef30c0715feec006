//! One function per command: the management API calls it makes and what it prints.
//! Results go to stdout (ids, tables, JSON); progress and prompts go to stderr.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::api::{query, segment, Api, CliError};
use crate::table::{compact, duration, render, text};
use crate::{print, ListArgs, PurgeArgs, ReasonArgs};

/// Statuses a purge can remove.
const FINISHED: [&str; 4] = ["Completed", "Failed", "Terminated", "Canceled"];

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn instance_path(id: &str) -> String {
    format!("instances/{}", segment(id))
}

/// `instances?...` for a status, prefix and creation range.
fn list_path(statuses: &[String], prefix: &str, from: &str, to: &str, top: &str) -> String {
    format!(
        "instances{}",
        query(&[
            ("runtimeStatus", &statuses.join(",")),
            ("instanceIdPrefix", prefix),
            ("createdTimeFrom", from),
            ("createdTimeTo", to),
            ("top", top),
            ("showInput", "false"),
        ])
    )
}

pub async fn list(api: &Api, a: &ListArgs) -> Result<(), CliError> {
    let top = a.top.to_string();
    let path = list_path(
        &a.status,
        a.prefix.as_deref().unwrap_or_default(),
        a.from.as_deref().unwrap_or_default(),
        a.to.as_deref().unwrap_or_default(),
        &top,
    );
    let limit = (!a.all).then_some(a.top as usize);
    let (items, more) = api.list_all(&path, limit).await?;
    if a.json {
        print(&pretty(&Value::Array(items)));
    } else if items.is_empty() {
        eprintln!("no instances match");
    } else {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| {
                vec![
                    text(i, "instanceId").to_string(),
                    text(i, "name").to_string(),
                    text(i, "runtimeStatus").to_string(),
                    text(i, "createdTime").to_string(),
                    text(i, "lastUpdatedTime").to_string(),
                    compact(i.get("customStatus")),
                ]
            })
            .collect();
        print(&render(
            &[
                "INSTANCE",
                "NAME",
                "STATUS",
                "CREATED",
                "LAST UPDATED",
                "CUSTOM STATUS",
            ],
            &rows,
        ));
    }
    if more {
        eprintln!("more instances match: --all lists them all");
    }
    Ok(())
}

async fn status(api: &Api, id: &str, extra: &[(&str, &str)]) -> Result<Value, CliError> {
    Ok(api
        .send(
            Method::GET,
            &format!("{}{}", instance_path(id), query(extra)),
            None,
            None,
        )
        .await?
        .body)
}

fn time(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text(v, key))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Why a finished instance did not complete: the failure details from its history, else
/// its output.
fn failure(s: &Value) -> String {
    let details = s
        .get("historyEvents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|e| {
            e.get("FailureDetails")
                .filter(|_| text(e, "EventType") == "ExecutionCompleted")
        });
    match details {
        Some(d) => format!("{}: {}", text(d, "ErrorType"), text(d, "ErrorMessage")),
        None => compact(s.get("output")),
    }
}

/// The history table: one row per event the management API shows, with the time from
/// scheduling to completion (or from a timer's creation to its firing).
fn history_rows(events: &[Value]) -> Vec<Vec<String>> {
    let mut timers: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    let mut rows = Vec::new();
    for e in events {
        let kind = text(e, "EventType");
        let at = time(e, "Timestamp");
        let started = match kind {
            "TimerCreated" => {
                if let Some(at) = at {
                    timers.entry(text(e, "FireAt")).or_default().push(at);
                }
                None
            }
            "TimerFired" => timers
                .get_mut(text(e, "FireAt"))
                .filter(|v| !v.is_empty())
                .map(|v| v.remove(0)),
            _ => time(e, "ScheduledTime"),
        };
        let name = match (e.get("EntityId"), e.get("Operation")) {
            (Some(id), Some(op)) => format!("{} {}", compact(Some(id)), compact(Some(op))),
            _ => [text(e, "FunctionName"), text(e, "Name")]
                .into_iter()
                .find(|n| !n.is_empty())
                .unwrap_or_default()
                .to_string(),
        };
        let detail = if let Some(d) = e.get("FailureDetails") {
            format!("{}: {}", text(d, "ErrorType"), text(d, "ErrorMessage"))
        } else if kind.starts_with("Timer") {
            format!("fire at {}", text(e, "FireAt"))
        } else if kind == "ExecutionCompleted" {
            format!(
                "{} {}",
                text(e, "OrchestrationStatus"),
                compact(e.get("Result"))
            )
        } else if let Some(r) = e.get("Result") {
            compact(Some(r))
        } else if !text(e, "InstanceId").is_empty() {
            format!("instance {}", text(e, "InstanceId"))
        } else {
            compact(e.get("Reason"))
        };
        let took = match (started, at) {
            (Some(s), Some(a)) => duration(a - s),
            _ => String::new(),
        };
        rows.push(vec![
            text(e, "Timestamp").to_string(),
            kind.to_string(),
            name,
            took,
            detail.trim().to_string(),
        ]);
    }
    rows
}

pub async fn show(api: &Api, id: &str, json: bool) -> Result<(), CliError> {
    let s = status(
        api,
        id,
        &[("showHistory", "true"), ("showHistoryOutput", "true")],
    )
    .await?;
    if json {
        print(&pretty(&s));
        return Ok(());
    }
    let st = text(&s, "runtimeStatus");
    let mut fields = vec![
        ("Instance", text(&s, "instanceId").to_string()),
        ("Orchestrator", text(&s, "name").to_string()),
        ("Status", st.to_string()),
        ("Created", text(&s, "createdTime").to_string()),
        ("Last updated", text(&s, "lastUpdatedTime").to_string()),
        ("Input", compact_json(s.get("input"))),
    ];
    if st == "Failed" {
        fields.push(("Failure", failure(&s)));
    } else {
        fields.push(("Output", compact_json(s.get("output"))));
    }
    fields.push(("Custom status", compact_json(s.get("customStatus"))));
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
    }
    let events = s
        .get("historyEvents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    out.push_str("\nHistory:\n");
    out.push_str(&render(
        &["TIME", "EVENT", "NAME", "DURATION", "DETAIL"],
        &history_rows(events),
    ));
    print(&out);
    Ok(())
}

/// JSON as written (strings keep their quotes), `null` when absent.
fn compact_json(v: Option<&Value>) -> String {
    v.unwrap_or(&Value::Null).to_string()
}

pub async fn start(
    api: &Api,
    name: &str,
    input: Option<&str>,
    id: Option<&str>,
) -> Result<(), CliError> {
    let mut path = format!("orchestrators/{}", segment(name));
    if let Some(id) = id {
        path.push('/');
        path.push_str(&segment(id));
    }
    let answer = api.send(Method::POST, &path, None, input).await?;
    print(&format!("{}\n", text(&answer.body, "id")));
    Ok(())
}

pub async fn raise(api: &Api, id: &str, event: &str, data: &str) -> Result<(), CliError> {
    let path = format!("{}/raiseEvent/{}", instance_path(id), segment(event));
    api.send(Method::POST, &path, None, Some(data)).await?;
    print(&format!("raised '{event}' on {id}\n"));
    Ok(())
}

pub async fn operate(api: &Api, op: &str, a: &ReasonArgs) -> Result<(), CliError> {
    let path = format!(
        "{}/{op}{}",
        instance_path(&a.id),
        query(&[("reason", a.reason.as_deref().unwrap_or_default())])
    );
    api.send(Method::POST, &path, None, None).await?;
    print(&format!("{op} requested for {}\n", a.id));
    Ok(())
}

pub async fn restart(api: &Api, id: &str, new_id: bool) -> Result<(), CliError> {
    let path = format!(
        "{}/restart{}",
        instance_path(id),
        query(&[("restartWithNewInstanceId", &new_id.to_string())])
    );
    let answer = api.send(Method::POST, &path, None, None).await?;
    print(&format!("{}\n", text(&answer.body, "id")));
    Ok(())
}

pub async fn purge(api: &Api, a: &PurgeArgs) -> Result<(), CliError> {
    if let Some(id) = &a.id {
        api.send(Method::DELETE, &instance_path(id), None, None)
            .await?;
        print(&format!("purged {id}\n"));
        return Ok(());
    }
    let from = a.from.as_deref().unwrap_or_default();
    let to = a.to.as_deref().unwrap_or_default();
    // The host purges only finished instances: count those, and say what stays.
    let (items, _) = api
        .list_all(&list_path(&a.status, "", from, to, "1000"), None)
        .await?;
    let finished = items
        .iter()
        .filter(|i| FINISHED.contains(&text(i, "runtimeStatus")))
        .count();
    let running = items.len() - finished;
    let what = format!(
        "created from {from}{}{}",
        if to.is_empty() {
            String::new()
        } else {
            format!(" to {to}")
        },
        if a.status.is_empty() {
            String::new()
        } else {
            format!(" with status {}", a.status.join(", "))
        }
    );
    eprintln!(
        "{finished} finished instance{} {what}{}",
        if finished == 1 { "" } else { "s" },
        if running > 0 {
            format!(" ({running} unfinished ones match too and are kept)")
        } else {
            String::new()
        }
    );
    if finished == 0 {
        print("purged 0 instances\n");
        return Ok(());
    }
    // The count is of the matching instances; the sub-orchestrations they started go
    // with them (the purge's parent-close rule) and are counted in the result.
    if !a.yes
        && !confirm(&format!(
            "Purge {finished} instances, with the sub-orchestrations they started? [y/N] "
        ))?
    {
        return Err(CliError::Failed("not confirmed; nothing was purged".into()));
    }
    let path = format!(
        "instances{}",
        query(&[
            ("createdTimeFrom", from),
            ("createdTimeTo", to),
            ("runtimeStatus", &a.status.join(",")),
        ])
    );
    let deleted = match api.send(Method::DELETE, &path, None, None).await {
        Ok(answer) => answer.body["instancesDeleted"].as_u64().unwrap_or(0),
        // Someone else purged them first.
        Err(CliError::Http { status, .. }) if status == StatusCode::NOT_FOUND => 0,
        Err(e) => return Err(e),
    };
    print(&format!("purged {deleted} instances\n"));
    Ok(())
}

/// Asks on stderr and reads one line from stdin: `y` or `yes` confirm.
fn confirm(prompt: &str) -> Result<bool, CliError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the confirmation: {e}")))?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// An entity key in a path: the empty key is `$`.
fn entity_path(name: &str, key: &str) -> String {
    let key = if key.is_empty() { "$" } else { key };
    format!("entities/{}/{}", segment(name), segment(key))
}

pub async fn entities_list(api: &Api, name: Option<&str>, json: bool) -> Result<(), CliError> {
    let path = match name {
        Some(n) => format!("entities/{}?fetchState=true", segment(n)),
        None => "entities?fetchState=true".to_string(),
    };
    let (items, _) = api.list_all(&path, None).await?;
    if json {
        print(&pretty(&Value::Array(items)));
        return Ok(());
    }
    if items.is_empty() {
        eprintln!("no entities");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                text(&e["entityId"], "name").to_string(),
                text(&e["entityId"], "key").to_string(),
                text(e, "lastOperationTime").to_string(),
                compact_json(e.get("state")),
            ]
        })
        .collect();
    print(&render(&["NAME", "KEY", "LAST OPERATION", "STATE"], &rows));
    Ok(())
}

pub async fn entities_get(api: &Api, name: &str, key: &str) -> Result<(), CliError> {
    let answer = api
        .send(Method::GET, &entity_path(name, key), None, None)
        .await?;
    print(&pretty(&answer.body));
    Ok(())
}

pub async fn entities_signal(
    api: &Api,
    name: &str,
    key: &str,
    op: &str,
    input: Option<&str>,
) -> Result<(), CliError> {
    let path = format!("{}{}", entity_path(name, key), query(&[("op", op)]));
    api.send(Method::POST, &path, None, input).await?;
    print(&format!("signalled '{op}' to {name}@{key}\n"));
    Ok(())
}

/// Polls the status until the instance finishes, keeping one progress line on stderr
/// (rewritten in place on a terminal, a new line per change otherwise).
pub async fn watch(api: &Api, id: &str, interval: Duration) -> Result<(), CliError> {
    let began = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let s = status(api, id, &[("showInput", "false")]).await?;
        let st = text(&s, "runtimeStatus").to_string();
        let custom = compact(s.get("customStatus"));
        let mut line = format!("{id}  {st}");
        if !custom.is_empty() {
            line.push_str(&format!("  {custom}"));
        }
        let finished = FINISHED.contains(&st.as_str());
        if tty {
            let elapsed =
                duration(chrono::TimeDelta::from_std(began.elapsed()).unwrap_or_default());
            eprint!("\r\x1b[2K{line}  {elapsed}");
            if finished {
                eprintln!();
            }
        } else if line != last_line {
            let elapsed =
                duration(chrono::TimeDelta::from_std(began.elapsed()).unwrap_or_default());
            eprintln!("{line}  {elapsed}");
        }
        last_line = line;
        match st.as_str() {
            "Completed" => {
                print(&pretty(s.get("output").unwrap_or(&Value::Null)));
                return Ok(());
            }
            "Failed" => {
                let s = status(api, id, &[("showHistory", "true"), ("showInput", "false")]).await?;
                return Err(CliError::Failed(format!(
                    "instance {id} failed: {}",
                    failure(&s)
                )));
            }
            "Terminated" | "Canceled" => {
                let reason = compact(s.get("output"));
                return Err(CliError::Failed(format!(
                    "instance {id} was {}{}",
                    st.to_ascii_lowercase(),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                )));
            }
            _ => tokio::time::sleep(interval).await,
        }
    }
}

pub async fn history_export(api: &Api, id: &str) -> Result<(), CliError> {
    let s = status(api, id, &[("historyFormat", "internal")]).await?;
    print(&pretty(&s));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_rows_carry_durations_for_tasks_and_timers() {
        let events = vec![
            json!({"EventType": "ExecutionStarted", "FunctionName": "o", "Timestamp": "2024-01-01T00:00:00.000Z"}),
            json!({"EventType": "TaskCompleted", "FunctionName": "a", "ScheduledTime": "2024-01-01T00:00:00.000Z", "Timestamp": "2024-01-01T00:00:01.500Z", "Result": 7}),
            json!({"EventType": "TimerCreated", "FireAt": "2024-01-01T00:00:05.000Z", "Timestamp": "2024-01-01T00:00:02.000Z"}),
            json!({"EventType": "TimerFired", "FireAt": "2024-01-01T00:00:05.000Z", "Timestamp": "2024-01-01T00:00:05.250Z"}),
            json!({"EventType": "TaskFailed", "FunctionName": "b", "ScheduledTime": "2024-01-01T00:00:05.250Z", "Timestamp": "2024-01-01T00:00:05.500Z", "FailureDetails": {"ErrorType": "ActivityError", "ErrorMessage": "boom"}}),
        ];
        let rows = history_rows(&events);
        assert_eq!(rows[1][2..], ["a", "1.5s", "7"]);
        assert_eq!(rows[3][3], "3.2s");
        assert_eq!(rows[4][3..], ["250ms", "ActivityError: boom"]);
    }
}
