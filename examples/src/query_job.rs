//! The async query job: `GET /api/submit/query?s=dd/mm/yyyy&e=dd/mm/yyyy` validates the
//! dates with the same messages as the original service, starts an orchestration that
//! runs a real query (distinct certified ids in a date range) against a SQLite table of
//! audit rows, and answers `{"statusUri": ...}`. The job is long: it reads the range a
//! week at a time, one chunk a minute, with its progress in the custom status.
//! `GET /api/status/{id}` answers `{"id", "status", "result", "progress"}` or 404
//! `Job not found`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use durable_core::Orchestrator;
use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError, StatusOptions,
};
use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The date range of a query job (ISO dates).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Range {
    /// First day, `YYYY-MM-DD`.
    pub start: String,
    /// Last day, `YYYY-MM-DD`.
    pub end: String,
}

/// The audit database: `QUERY_JOB_DB`, or `./audit.db`.
pub fn audit_db() -> PathBuf {
    std::env::var_os("QUERY_JOB_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("audit.db"))
}

/// Creates and fills the audit table when it is empty: 5,000 rows over 2021, some
/// without a certificate, ids repeating.
pub fn seed_audit_rows(path: &std::path::Path) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit(
            partition_key TEXT NOT NULL,          -- YYYY-MM-DD
            identification_number TEXT NOT NULL,
            cert_number TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX IF NOT EXISTS audit_day ON audit(partition_key);",
    )?;
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?;
    if n > 0 {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare("INSERT INTO audit(partition_key, identification_number, cert_number) VALUES(?1, ?2, ?3)")?;
        let start = NaiveDate::from_ymd_opt(2021, 1, 1).expect("valid date");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let day = start + chrono::Duration::days((x % 365) as i64);
            let id = format!("ID-{:04}", (x >> 20) % 1500);
            let cert = if (x >> 40).is_multiple_of(5) {
                String::new()
            } else {
                format!("C{}", (x >> 8) % 100_000)
            };
            ins.execute(rusqlite::params![
                day.format("%Y-%m-%d").to_string(),
                id,
                cert
            ])?;
        }
    }
    tx.commit()
}

/// Counts distinct certified ids in the range (the query of the original job).
pub fn count_certified(path: &std::path::Path, range: &Range) -> rusqlite::Result<i64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row(
        "SELECT COUNT(DISTINCT identification_number) FROM audit
         WHERE partition_key >= ?1 AND partition_key <= ?2 AND cert_number <> ''",
        rusqlite::params![range.start, range.end],
        |r| r.get(0),
    )
}

/// The distinct certified ids in the range (one chunk of a job's query).
pub fn certified_ids(path: &std::path::Path, range: &Range) -> rusqlite::Result<Vec<String>> {
    let conn = rusqlite::Connection::open(path)?;
    let mut q = conn.prepare(
        "SELECT DISTINCT identification_number FROM audit
         WHERE partition_key >= ?1 AND partition_key <= ?2 AND cert_number <> ''
         ORDER BY identification_number",
    )?;
    let ids = q
        .query_map(rusqlite::params![range.start, range.end], |r| r.get(0))?
        .collect();
    ids
}

/// Days of audit rows one chunk of a job reads.
pub const CHUNK_DAYS: i64 = 7;

/// The pause between chunks: the audit store serves one chunk query a minute, so a
/// three-month job runs for a quarter of an hour.
pub const CHUNK_PAUSE: Duration = Duration::from_secs(60);

/// The chunks of `range`: consecutive spans of [`CHUNK_DAYS`] days (the last one shorter).
pub fn chunks(range: &Range) -> Result<Vec<Range>, String> {
    let parse = |d: &str| {
        NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| format!("'{d}' is not a YYYY-MM-DD date"))
    };
    let (start, end) = (parse(&range.start)?, parse(&range.end)?);
    if end < start {
        return Err(format!(
            "the range {} to {} is empty",
            range.start, range.end
        ));
    }
    let mut out = Vec::new();
    let mut from = start;
    while from <= end {
        let to = (from + chrono::Duration::days(CHUNK_DAYS - 1)).min(end);
        out.push(Range {
            start: from.format("%Y-%m-%d").to_string(),
            end: to.format("%Y-%m-%d").to_string(),
        });
        from = to + chrono::Duration::days(1);
    }
    Ok(out)
}

/// How far a job is, in its custom status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Chunks queried.
    pub chunks_done: usize,
    /// Chunks in the job.
    pub chunks: usize,
    /// `chunks_done` of `chunks`, in percent.
    pub percent: usize,
    /// The last day queried so far.
    pub through: String,
    /// Distinct certified ids found so far.
    pub found: usize,
}

/// Queries one chunk (on the blocking pool: SQLite calls block).
#[activity]
pub async fn query_audit_chunk(range: Range) -> Result<Vec<String>, ActivityError> {
    let path = audit_db();
    let ids = tokio::task::spawn_blocking(move || certified_ids(&path, &range)).await??;
    Ok(ids)
}

/// Runs the query chunk by chunk, a minute apart, reporting its progress in the custom
/// status; the result is the number of distinct certified ids in the whole range.
#[orchestrator]
pub async fn query_orchestrator(
    ctx: OrchestrationContext,
    range: Range,
) -> Result<i64, OrchestrationError> {
    let chunks = chunks(&range).map_err(OrchestrationError::new)?;
    let mut ids = BTreeSet::new();
    let mut progress = Progress {
        chunks_done: 0,
        chunks: chunks.len(),
        percent: 0,
        through: String::new(),
        found: 0,
    };
    ctx.set_custom_status(&progress);
    for (i, chunk) in chunks.into_iter().enumerate() {
        if i > 0 {
            ctx.create_timer(CHUNK_PAUSE).await;
        }
        let through = chunk.end.clone();
        ids.extend(ctx.call_activity(query_audit_chunk, chunk).await?);
        progress.chunks_done = i + 1;
        progress.percent = progress.chunks_done * 100 / progress.chunks;
        progress.through = through;
        progress.found = ids.len();
        ctx.set_custom_status(&progress);
    }
    Ok(ids.len() as i64)
}

fn bad(msg: &str) -> HttpError {
    HttpError::bad_request(msg)
}

fn date(value: Option<&str>, empty: &str, invalid: &str) -> Result<NaiveDate, HttpError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Err(bad(empty)),
        Some(v) => NaiveDate::parse_from_str(v, "%d/%m/%Y").map_err(|_| bad(invalid)),
    }
}

/// `GET /api/submit/query?s=dd/mm/yyyy&e=dd/mm/yyyy`.
#[http_start(route = "/api/submit/query", method = "GET")]
pub async fn submit_query(client: DurableClient, req: HttpRequest) -> HttpResult {
    let start = date(
        req.query("s"),
        "Empty start date.",
        "Invalid start date format.",
    )?;
    let end = date(
        req.query("e"),
        "Empty end date.",
        "Invalid end date format.",
    )?;
    if (end - start).num_days() < 1 {
        return Err(bad("Invalid date range."));
    }
    let range = Range {
        start: start.format("%Y-%m-%d").to_string(),
        end: end.format("%Y-%m-%d").to_string(),
    };
    let id = client.start(query_orchestrator, range).await?;
    let status_uri = format!("{}/api/status/{id}", req.base_url());
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({ "statusUri": status_uri }),
    ))
}

/// `GET /api/status/{id}`: `{"id", "status", "result"}` or 404 `Job not found`.
#[http_start(route = "/api/status/{id}", method = "GET")]
pub async fn job_status(client: DurableClient, req: HttpRequest) -> HttpResult {
    let id = req.param("id").unwrap_or_default();
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
        // Only this scenario's jobs: the route is public.
        Ok(Some(s)) if s.state.name == <query_orchestrator as Orchestrator>::NAME => s,
        Ok(_) | Err(durable_core::Error::InvalidArgument(_)) => {
            return Err(HttpError::not_found("Job not found"))
        }
        Err(e) => return Err(e.into()),
    };
    let result: Option<serde_json::Value> = status.output().unwrap_or(None);
    let progress: Option<serde_json::Value> = status.custom_status().unwrap_or(None);
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({ "id": id, "status": status.status().as_str(), "result": result, "progress": progress }),
    ))
}
