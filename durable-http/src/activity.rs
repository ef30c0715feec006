//! The built-in activity behind `ctx.call_http`: performs one HTTP request with a real
//! client (hyper; plain `http://`) and returns status, headers and body. Token sources
//! registered here add an `Authorization` header at call time, so tokens never reach
//! history or status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use durable_core::http::{DurableHttpRequest, DurableHttpResponse, HTTP_ACTIVITY};
use durable_core::registry::{BoxFuture, Outcome};
use durable_core::{ActivityContext, FailureDetails};
use http_body_util::{BodyExt, Full};

/// Produces a bearer token when a durable HTTP request names this source.
pub type TokenSource = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

fn sources() -> &'static RwLock<HashMap<String, TokenSource>> {
    static SOURCES: OnceLock<RwLock<HashMap<String, TokenSource>>> = OnceLock::new();
    SOURCES.get_or_init(Default::default)
}

/// Registers a token source under `name` (requests use it with `.token_source(name)`).
pub fn register_token_source<F, Fut>(name: &str, f: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    let f: TokenSource = Arc::new(move || Box::pin(f()));
    sources()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), f);
}

fn client() -> &'static hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    static CLIENT: OnceLock<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Full<Bytes>,
        >,
    > = OnceLock::new();
    CLIENT.get_or_init(|| {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new())
    })
}

/// Performs one request.
pub async fn execute(req: DurableHttpRequest) -> Result<DurableHttpResponse, FailureDetails> {
    let what = format!("{} {}", req.method, req.url);
    if req.url.starts_with("https://") {
        return Err(FailureDetails {
            error_type: "Unsupported".into(),
            message: format!("{what}: https is not supported by the built-in HTTP client; terminate TLS in a local proxy"),
            details: None,
            non_retriable: true,
        });
    }
    let method = http::Method::from_bytes(req.method.as_bytes()).map_err(|_| FailureDetails {
        error_type: "InvalidArgument".into(),
        message: format!("invalid method '{}'", req.method),
        details: None,
        non_retriable: true,
    })?;
    let mut builder = http::Request::builder().method(method).uri(&req.url);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some(name) = &req.token_source {
        let source = sources()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                FailureDetails::new(
                    "UnknownTokenSource",
                    format!("no token source named '{name}' is registered"),
                )
            })?;
        let token = source().await.map_err(|e| {
            FailureDetails::new(
                "TokenSourceFailed",
                format!("token source '{name}' failed: {e}"),
            )
        })?;
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone().unwrap_or_default())))
        .map_err(|e| FailureDetails {
            error_type: "InvalidArgument".into(),
            message: format!("{what}: {e}"),
            details: None,
            non_retriable: true,
        })?;
    let timeout = req.timeout.unwrap_or(Duration::from_secs(100));
    let call = async {
        let resp = client()
            .request(request)
            .await
            .map_err(|e| FailureDetails::new("TransportError", format!("{what}: {e}")))?;
        let status = resp.status().as_u16();
        let headers: BTreeMap<String, String> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                FailureDetails::new(
                    "TransportError",
                    format!("{what}: reading the body failed: {e}"),
                )
            })?
            .to_bytes();
        Ok::<_, FailureDetails>(DurableHttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    let resp = tokio::time::timeout(timeout, call).await.map_err(|_| {
        FailureDetails::new("Timeout", format!("{what}: no response within {timeout:?}"))
    })??;
    if req.retry_status_codes.contains(&resp.status) {
        return Err(FailureDetails::new(
            "RetriableStatus",
            format!("{what} answered {}", resp.status),
        ));
    }
    Ok(resp)
}

fn invoke(_ctx: ActivityContext, input: Option<String>) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        let req: DurableHttpRequest =
            durable_core::registry::decode_input("activity 'durable::http'", input.as_deref())?;
        let resp = execute(req).await?;
        durable_core::registry::encode(&resp)
    })
}

inventory::submit! {
    durable_core::registry::ActivityRegistration {
        name: HTTP_ACTIVITY,
        invoke,
        location: "durable_http::activity (built in)",
    }
}
