//! Durable search (seed 003): HTTP tasks from orchestrations.
//!
//! - `GET /api/search` serves a one-page app (embedded HTML and JavaScript; nothing from
//!   the request is written into it, and its script runs under a fresh CSP nonce) where a
//!   person types a query (`?q=...` searches at once).
//! - `GET` or `POST /api/search/start?q=...` starts two orchestrations: `search_workflow`,
//!   which fans out `ctx.call_http` to every search site in parallel and fans the pages
//!   back in, and `watch_workflow`, which GETs the search's public status URL once with
//!   `ctx.call_http`: the HTTP task itself polls the `202` answers on durable timers until
//!   the search is done, then returns the final status code. It answers
//!   `{"id", "watcherId", "resultUrl"}`.
//! - `GET /api/search/results/{id}`: 404 for an unknown search, 400 `Orchestration
//!   failed.` when it failed or was terminated, 200 with the pages as HTML separated by
//!   `<hr/>` when done, 202 while it runs.
//!
//! With no internet, the "sites" are endpoints this program serves itself under
//! `/api/search/sites/`: `fast` answers at once, `slow` answers `202 Accepted` and makes
//! the HTTP task poll it, `broken` answers 500, and `offline` points at a closed port.
//! Pages that are not a 200 become "No Results", so one bad site never spoils a search.
//!
//! The URLs the server itself calls (the sites, the watcher's status URL) start with
//! the host's configured base ([`HttpRequest::configured_base_url`]: the public URL or
//! the bound address), never with anything a request's headers say. The slow site keeps
//! at most [`MAX_SLOW_JOBS`] jobs, each for [`SLOW_JOB_TTL`].

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use durable_core::http::DurableHttpRequest;
use durable_core::{orchestrator, OrchestrationContext, OrchestrationError, StatusOptions};
use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{html_escape, url_encode};

/// The page, with `{nonce}` where each answer's CSP nonce goes.
pub const PAGE: &str = include_str!("durable_search.html");
/// Longest query accepted.
pub const MAX_QUERY_CHARS: usize = 200;
/// The sites every search asks, in the order their pages are shown.
pub const SITES: [&str; 4] = ["fast", "slow", "broken", "offline"];
/// Where the `offline` site points: a port nothing listens on.
pub const OFFLINE_URL: &str = "http://127.0.0.1:1/search";
/// Most slow-site jobs kept at once; more are refused with 503 until old ones expire.
pub const MAX_SLOW_JOBS: usize = 1000;
/// How long a slow-site job is kept (it is done after two polls; kept a while longer in
/// case a retried poll asks again).
pub const SLOW_JOB_TTL: Duration = Duration::from_secs(300);
/// The public status route of the host (its default), which the watcher polls.
const STATUS_ROUTE: &str = "/api/instances";

/// A site to search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// The URL to GET, query included.
    pub url: String,
}

/// The input of `search_workflow`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchInput {
    /// What the person typed.
    pub query: String,
    /// Where to search.
    pub sites: Vec<Site>,
}

/// The page shown for a site that did not answer 200.
pub fn no_results(site: &str, why: &str) -> String {
    format!(
        "<h1>No Results</h1><p>{} {}</p>",
        html_escape(site),
        html_escape(why)
    )
}

/// Searches every site in parallel with durable HTTP calls and returns one page per
/// site, in order: the site's page when it answered 200, "No Results" otherwise.
#[orchestrator]
pub async fn search_workflow(
    ctx: OrchestrationContext,
    input: SearchInput,
) -> Result<Vec<String>, OrchestrationError> {
    let searches: Vec<_> = input
        .sites
        .iter()
        .map(|s| {
            ctx.call_http(DurableHttpRequest::get(s.url.clone()).timeout(Duration::from_secs(20)))
        })
        .collect();
    let responses = ctx.when_all(searches).await;
    let mut pages = Vec::new();
    for (site, response) in input.sites.iter().zip(responses) {
        pages.push(match response {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => no_results(&site.name, &format!("answered {}", r.status)),
            // An unreachable site fails its task; the search goes on without it.
            Err(_) => no_results(&site.name, "could not be reached"),
        });
    }
    Ok(pages)
}

/// GETs a status URL once; the HTTP task polls while it answers 202 and returns the
/// final status code.
#[orchestrator]
pub async fn watch_workflow(
    ctx: OrchestrationContext,
    status_url: String,
) -> Result<u16, OrchestrationError> {
    let response = ctx.call_http(DurableHttpRequest::get(status_url)).await?;
    Ok(response.status)
}

/// `GET /api/search`: the search page. It finds its routes relative to its own address,
/// so nothing from the request is embedded; only a random nonce that lets its one script
/// run (results pasted into the page cannot run scripts).
#[http_start(route = "/api/search", method = "GET")]
pub async fn search_page(_client: DurableClient, _req: HttpRequest) -> HttpResult {
    let nonce = durable_core::store::random_id();
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'"
    );
    Ok(HttpResponse::html(PAGE.replace("{nonce}", &nonce))
        .with_header("content-security-policy", csp)
        .with_header("x-content-type-options", "nosniff"))
}

/// `GET` or `POST /api/search/start?q=...`: starts the search and its watcher.
#[http_start(route = "/api/search/start", methods = "GET, POST")]
pub async fn start_search(client: DurableClient, req: HttpRequest) -> HttpResult {
    let query = req
        .query("q")
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if query.is_empty() {
        return Err(HttpError::bad_request("give a query: ?q=..."));
    }
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(HttpError::bad_request(format!(
            "the query is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    // The sites are this host's own routes: reached through its configured base, never a
    // base a request names (that would let anyone make the server fetch any URL).
    let Some(own) = req.configured_base_url() else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host has no configured URL to reach its search sites: set DURABLE_PUBLIC_URL",
        ));
    };
    let sites = SITES
        .iter()
        .map(|name| Site {
            name: name.to_string(),
            url: if *name == "offline" {
                format!("{OFFLINE_URL}?q={}", url_encode(&query))
            } else {
                format!("{own}/api/search/sites/{name}?q={}", url_encode(&query))
            },
        })
        .collect();
    let id = client
        .start(search_workflow, SearchInput { query, sites })
        .await?;
    // The watcher polls the public status URL: no management URL, no key.
    let status_url = format!("{own}{STATUS_ROUTE}/{}", url_encode(&id));
    let watcher_id = client.start(watch_workflow, status_url).await?;
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({
            "id": id,
            "watcherId": watcher_id,
            "resultUrl": format!("{}/api/search/results/{}", req.base_url(), url_encode(&id)),
        }),
    ))
}

/// `GET /api/search/results/{id}`: 404 unknown, 400 failed, 200 the pages, 202 running.
#[http_start(route = "/api/search/results/{id}", method = "GET")]
pub async fn search_result(client: DurableClient, req: HttpRequest) -> HttpResult {
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
        Ok(Some(s)) if s.state.name == "search_workflow" => s,
        Ok(_) | Err(durable_core::Error::InvalidArgument(_)) => {
            return Err(HttpError::not_found(format!("no search with id '{id}'")))
        }
        Err(e) => return Err(e.into()),
    };
    match status.status() {
        durable_core::RuntimeStatus::Completed => {
            let pages: Vec<String> = status
                .output()
                .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .unwrap_or_default();
            // Pages come from other sites: shown on their own, they may not run scripts.
            Ok(HttpResponse::html(pages.join("<hr/>"))
                .with_header(
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'",
                )
                .with_header("x-content-type-options", "nosniff"))
        }
        s if s.is_terminal() => Err(HttpError::bad_request("Orchestration failed.")),
        s => Ok(HttpResponse::json(
            StatusCode::ACCEPTED,
            &json!({"id": id, "runtimeStatus": s.as_str()}),
        )
        .with_header("retry-after", "1")),
    }
}

// ---------------------------------------------------------------------------------------
// The demo search sites.

/// The slow site's jobs: polls so far and when each started. Bounded: expired jobs go
/// when a new one starts, and at [`MAX_SLOW_JOBS`] new ones are refused.
#[derive(Debug, Default)]
pub struct SlowJobs {
    jobs: HashMap<String, (u32, Instant)>,
}

impl SlowJobs {
    /// Starts job `id` at `now`; `false` when the table is full of live jobs.
    pub fn start(&mut self, id: String, now: Instant) -> bool {
        if self.jobs.len() >= MAX_SLOW_JOBS {
            self.jobs
                .retain(|_, (_, started)| now.saturating_duration_since(*started) < SLOW_JOB_TTL);
        }
        if self.jobs.len() >= MAX_SLOW_JOBS {
            return false;
        }
        self.jobs.insert(id, (0, now));
        true
    }

    /// Counts a poll of job `id` at `now`; its polls so far, or `None` for an unknown or
    /// expired job.
    pub fn poll(&mut self, id: &str, now: Instant) -> Option<u32> {
        let (polls, started) = self.jobs.get_mut(id)?;
        if now.saturating_duration_since(*started) >= SLOW_JOB_TTL {
            self.jobs.remove(id);
            return None;
        }
        *polls = polls.saturating_add(1);
        Some(*polls)
    }

    /// How many jobs are kept.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is kept.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

fn slow_jobs() -> &'static Mutex<SlowJobs> {
    static JOBS: OnceLock<Mutex<SlowJobs>> = OnceLock::new();
    JOBS.get_or_init(Default::default)
}

fn results_page(title: &str, query: &str, n: usize) -> String {
    let q = html_escape(query);
    let items: String = (1..=n)
        .map(|i| format!("<li><a href=\"#{i}\">{q}, result {i}</a> from {title}</li>"))
        .collect();
    format!("<h2>{title}</h2><p>{n} results for <b>{q}</b></p><ul>{items}</ul>")
}

/// `GET /api/search/sites/{site}?q=...`: `fast` answers 200, `slow` answers 202 with a
/// job to poll, `broken` answers 500; other names are 404.
#[http_start(route = "/api/search/sites/{site}", method = "GET")]
pub async fn search_site(_client: DurableClient, req: HttpRequest) -> HttpResult {
    let query = req.query("q").unwrap_or_default().to_string();
    match req.param("site").unwrap_or_default() {
        "fast" => Ok(HttpResponse::html(results_page("Fast Search", &query, 3))),
        "slow" => {
            let job = durable_core::store::random_id();
            let started = slow_jobs()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .start(job.clone(), Instant::now());
            if !started {
                return Ok(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many searches in progress",
                )
                .into_response()
                .with_header("retry-after", "5"));
            }
            Ok(
                HttpResponse::json(StatusCode::ACCEPTED, &json!({"job": job}))
                    .with_header(
                        "location",
                        format!("/api/search/sites/slow/jobs/{job}?q={}", url_encode(&query)),
                    )
                    .with_header("retry-after", "1"),
            )
        }
        "broken" => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the index is being rebuilt",
        )),
        other => Err(HttpError::not_found(format!("no search site '{other}'"))),
    }
}

/// `GET /api/search/sites/slow/jobs/{job}?q=...`: 202 on the first poll, the page from
/// the second on.
#[http_start(route = "/api/search/sites/slow/jobs/{job}", method = "GET")]
pub async fn slow_site_job(_client: DurableClient, req: HttpRequest) -> HttpResult {
    let job = req.param("job").unwrap_or_default().to_string();
    let polls = slow_jobs()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .poll(&job, Instant::now());
    let Some(polls) = polls else {
        return Err(HttpError::not_found(format!("no search job '{job}'")));
    };
    if polls < 2 {
        return Ok(
            HttpResponse::json(StatusCode::ACCEPTED, &json!({"job": job, "polls": polls}))
                .with_header(
                    "location",
                    format!(
                        "/api/search/sites/slow/jobs/{job}?q={}",
                        url_encode(req.query("q").unwrap_or_default())
                    ),
                )
                .with_header("retry-after", "1"),
        );
    }
    Ok(HttpResponse::html(results_page(
        "Slow Search",
        req.query("q").unwrap_or_default(),
        2,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_jobs_are_capped_and_expire() {
        let mut jobs = SlowJobs::default();
        let t0 = Instant::now();
        for i in 0..MAX_SLOW_JOBS {
            assert!(jobs.start(format!("job-{i}"), t0));
        }
        // Full of live jobs: refused, and the table does not grow.
        assert!(!jobs.start("one-more".into(), t0 + Duration::from_secs(1)));
        assert_eq!(jobs.len(), MAX_SLOW_JOBS);
        assert_eq!(jobs.poll("job-0", t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(jobs.poll("job-0", t0 + Duration::from_secs(2)), Some(2));
        // Once they expire they make room, and an expired job is gone.
        let later = t0 + SLOW_JOB_TTL;
        assert!(jobs.start("fresh".into(), later));
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs.poll("job-1", later), None);
        assert_eq!(jobs.poll("fresh", later), Some(1));
        assert_eq!(jobs.poll("nope", later), None);
    }
}
