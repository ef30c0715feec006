//! The start-endpoint routing table: routes with `{param}` segments, collected from
//! `#[http_start]` registrations and manual ones; colliding routes are refused at startup.

use std::collections::HashMap;
use std::sync::Arc;

use durable_core::registry::BoxFuture;
use durable_core::DurableClient;
use http::Method;

use crate::request::{HttpRequest, HttpResult};

/// A type-erased start endpoint.
pub type Handler =
    Arc<dyn Fn(DurableClient, HttpRequest) -> BoxFuture<'static, HttpResult> + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone)]
pub(crate) struct Route {
    methods: Vec<Method>,
    segments: Vec<Segment>,
    pub(crate) handler: Handler,
    pub(crate) pattern: String,
    location: String,
}

/// The routing table.
#[derive(Clone, Default)]
pub(crate) struct Router {
    routes: Vec<Route>,
}

/// The outcome of matching a request.
pub(crate) enum Match<'a> {
    Found(&'a Route, HashMap<String, String>),
    /// The path exists, but not for this method; the allowed methods and the pattern of
    /// the first route the path matched.
    WrongMethod(Vec<Method>, String),
    None,
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Parses a route pattern like `/api/status/{id}`.
fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    if !pattern.starts_with('/') {
        return Err(format!("route '{pattern}' must start with '/'"));
    }
    split(pattern)
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("route '{pattern}' has an invalid parameter '{s}'"));
                }
                Ok(Segment::Param(name.to_string()))
            } else if s.contains(['{', '}']) {
                Err(format!(
                    "route '{pattern}': a segment is either literal or a whole {{param}}"
                ))
            } else {
                Ok(Segment::Literal(s.to_string()))
            }
        })
        .collect()
}

impl Router {
    /// Adds a route; a route with the same method and shape as an existing one is an error
    /// naming both definitions.
    pub(crate) fn add(
        &mut self,
        methods: &[&str],
        pattern: &str,
        handler: Handler,
        location: &str,
    ) -> Result<(), String> {
        let segments = parse_pattern(pattern)?;
        let mut parsed = Vec::new();
        for m in methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("route '{pattern}' has an invalid method '{m}'"))?;
            parsed.push(method);
        }
        if parsed.is_empty() {
            return Err(format!("route '{pattern}' needs at least one method"));
        }
        let shape = |segs: &[Segment]| -> Vec<String> {
            segs.iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.clone(),
                    Segment::Param(_) => "{}".to_string(),
                })
                .collect()
        };
        for r in &self.routes {
            if shape(&r.segments) == shape(&segments) {
                if let Some(m) = parsed.iter().find(|m| r.methods.contains(m)) {
                    return Err(format!(
                        "routes collide: {m} {pattern} ({location}) and {m} {} ({})",
                        r.pattern, r.location
                    ));
                }
            }
        }
        self.routes.push(Route {
            methods: parsed,
            segments,
            handler,
            pattern: pattern.to_string(),
            location: location.to_string(),
        });
        Ok(())
    }

    /// Finds the route for a method and path.
    pub(crate) fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let parts: Vec<&str> = split(path).collect();
        let mut allowed = Vec::new();
        let mut pattern = None;
        for r in &self.routes {
            if r.segments.len() != parts.len() {
                continue;
            }
            let mut params = HashMap::new();
            let ok = r.segments.iter().zip(&parts).all(|(seg, part)| match seg {
                Segment::Literal(l) => l == part,
                Segment::Param(name) => {
                    params.insert(name.clone(), crate::request::percent_decode(part));
                    true
                }
            });
            if !ok {
                continue;
            }
            if r.methods.contains(method) {
                return Match::Found(r, params);
            }
            allowed.extend(r.methods.iter().cloned());
            pattern.get_or_insert_with(|| r.pattern.clone());
        }
        match pattern {
            Some(p) if !allowed.is_empty() => Match::WrongMethod(allowed, p),
            _ => Match::None,
        }
    }

    /// Every route as `METHOD pattern`, for the startup log.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.routes
            .iter()
            .flat_map(|r| r.methods.iter().map(move |m| format!("{m} {}", r.pattern)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Handler {
        Arc::new(|_c, _r| Box::pin(async { Ok(crate::HttpResponse::empty(http::StatusCode::OK)) }))
    }

    #[test]
    fn params_match_and_collisions_are_refused() {
        let mut r = Router::default();
        r.add(&["GET"], "/api/status/{id}", h(), "a.rs:1").unwrap();
        r.add(&["POST"], "/api/status/{id}", h(), "b.rs:2").unwrap();
        let err = r
            .add(&["GET"], "/api/status/{other}", h(), "c.rs:3")
            .unwrap_err();
        assert!(err.contains("a.rs:1") && err.contains("c.rs:3"), "{err}");
        match r.find(&Method::GET, "/api/status/a%20b") {
            Match::Found(_, p) => assert_eq!(p["id"], "a b"),
            _ => panic!("no match"),
        }
        assert!(matches!(
            r.find(&Method::DELETE, "/api/status/x"),
            Match::WrongMethod(..)
        ));
        assert!(matches!(r.find(&Method::GET, "/api/other"), Match::None));
        assert!(r.add(&["GET"], "api/x", h(), "d").is_err());
        assert!(r.add(&["GET"], "/api/{x-y}", h(), "d").is_err());
    }
}
