//! Durable search (seed 003): HTTP tasks from orchestrations.
//!
//! - `GET /api/search` serves a one-page app (embedded HTML and JavaScript, the base URL
//!   filled in from the request) where a person types a query (`?q=...` searches at
//!   once).
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

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use durable_core::http::DurableHttpRequest;
use durable_core::{orchestrator, OrchestrationContext, OrchestrationError, StatusOptions};
use durable_http::{
    http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{html_escape, url_encode};

/// The page, with `{baseUrl}` where the base URL goes.
pub const PAGE: &str = include_str!("durable_search.html");
/// Longest query accepted.
pub const MAX_QUERY_CHARS: usize = 200;
/// The sites every search asks, in the order their pages are shown.
pub const SITES: [&str; 4] = ["fast", "slow", "broken", "offline"];
/// Where the `offline` site points: a port nothing listens on.
pub const OFFLINE_URL: &str = "http://127.0.0.1:1/search";

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

/// `GET /api/search`: the search page.
#[http_start(route = "/api/search", method = "GET")]
pub async fn search_page(_client: DurableClient, req: HttpRequest) -> HttpResult {
    Ok(HttpResponse::html(
        PAGE.replace("{baseUrl}", req.base_url()),
    ))
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
    let base = req.base_url();
    let sites = SITES
        .iter()
        .map(|name| Site {
            name: name.to_string(),
            url: if *name == "offline" {
                format!("{OFFLINE_URL}?q={}", url_encode(&query))
            } else {
                format!("{base}/api/search/sites/{name}?q={}", url_encode(&query))
            },
        })
        .collect();
    let id = client
        .start(search_workflow, SearchInput { query, sites })
        .await?;
    // The watcher polls the public status URL: no management URL, no key.
    let status = client.check_status_response(&req, &id);
    let status_url = status.header("location").unwrap_or_default().to_string();
    let watcher_id = client.start(watch_workflow, status_url).await?;
    Ok(HttpResponse::json(
        StatusCode::OK,
        &json!({
            "id": id,
            "watcherId": watcher_id,
            "resultUrl": format!("{base}/api/search/results/{}", url_encode(&id)),
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
            Ok(HttpResponse::html(pages.join("<hr/>")))
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

fn slow_jobs() -> &'static Mutex<HashMap<String, u32>> {
    static JOBS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
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
            slow_jobs()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.clone(), 0);
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
    let polls = {
        let mut jobs = slow_jobs().lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = jobs.get_mut(&job) else {
            return Err(HttpError::not_found(format!("no search job '{job}'")));
        };
        *n += 1;
        *n
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
