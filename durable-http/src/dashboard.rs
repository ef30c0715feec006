//! The operator dashboard at `/dashboard/`: a page, a script and a style sheet embedded in
//! the binary (no CDN, no build step). The page holds no data, so it is served without a
//! key; it asks the operator for the management key and reads everything through the keyed
//! management API, whose paths it derives from its own URL (so it works under a mount
//! prefix too).

use http::{Method, StatusCode};

use crate::request::{HttpError, HttpResponse, HttpResult};

/// The dashboard's path (under the host's mount prefix).
pub(crate) const PATH: &str = "/dashboard";

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
const ICON_SVG: &str = include_str!("../dashboard/icon.svg");

/// Only the host's own files and API: no inline script or style, no framing, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers a request for the dashboard, or `None` when `path` (without the mount prefix)
/// is not the dashboard's.
pub(crate) fn serve(method: &Method, path: &str) -> Option<HttpResult> {
    let rest = path.strip_prefix(PATH)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(Ok(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed here; allowed: GET, HEAD"),
        )
        .into_response()
        .with_header("allow", "GET, HEAD")));
    }
    let (content_type, body) = match rest {
        // Relative, so the redirect keeps whatever prefix the request came through.
        "" => {
            return Some(Ok(secure(HttpResponse::empty(
                StatusCode::PERMANENT_REDIRECT,
            ))
            .with_header("location", "dashboard/")))
        }
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/app.css" => ("text/css; charset=utf-8", APP_CSS),
        "/icon.svg" => ("image/svg+xml", ICON_SVG),
        _ => {
            return Some(Err(HttpError::not_found(format!(
                "no dashboard file {path}"
            ))))
        }
    };
    Some(Ok(secure(
        HttpResponse::empty(StatusCode::OK)
            .with_header("content-type", content_type)
            .with_body(body),
    )))
}

/// The security headers of every dashboard answer.
fn secure(resp: HttpResponse) -> HttpResponse {
    resp.with_header("content-security-policy", CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("x-frame-options", "DENY")
        .with_header("cross-origin-opener-policy", "same-origin")
        .with_header("cross-origin-resource-policy", "same-origin")
        .with_header("cache-control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a HttpResponse, name: &str) -> &'a str {
        r.header(name).unwrap_or_default()
    }

    #[test]
    fn serves_the_embedded_files_with_strict_headers() {
        for (path, kind) in [
            ("/dashboard/", "text/html"),
            ("/dashboard/index.html", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/app.css", "text/css"),
            ("/dashboard/icon.svg", "image/svg+xml"),
        ] {
            let r = serve(&Method::GET, path).unwrap().unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(header(&r, "content-type").starts_with(kind), "{path}");
            assert!(!r.body().is_empty(), "{path}");
            let csp = header(&r, "content-security-policy");
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "referrer-policy"), "no-referrer");
        }
    }

    #[test]
    fn redirects_refuses_other_methods_and_leaves_other_paths_alone() {
        let r = serve(&Method::GET, "/dashboard").unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header(&r, "location"), "dashboard/");
        let e = serve(&Method::GET, "/dashboard/secret")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let r = serve(&Method::POST, "/dashboard/").unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&r, "allow"), "GET, HEAD");
        assert!(serve(&Method::GET, "/dashboards").is_none());
        assert!(serve(&Method::GET, "/api/dashboard").is_none());
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        // No inline event handlers (`onclick=` and the like).
        let lower = INDEX_HTML.to_ascii_lowercase();
        let handlers = lower.match_indices(" on").filter(|(i, _)| {
            let rest = &lower[i + 3..];
            let word = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            word > 0 && rest[word..].trim_start().starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "inline event handlers");
        // Data is inserted as text only.
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("document.write"));
    }
}
