//! The host's one routing table, on `matchit`: the start endpoints (collected from
//! `#[http_start]` registrations and manual ones), the public status route, the
//! management API, the dashboard and the metrics. Routes with `{param}` segments; host
//! routes end in a `{*rest}` catch-all. Colliding routes are refused at startup, naming
//! both definitions; a start route under a host route is refused too.
//!
//! Paths are matched with empty segments dropped (`/api//x/` is `/api/x`), parameters are
//! percent-decoded, and the matched route's pattern names the request in the metrics.

use std::collections::HashMap;
use std::sync::Arc;

use durable_core::registry::BoxFuture;
use durable_core::DurableClient;
use http::Method;

use crate::request::{HttpRequest, HttpResult};

/// A type-erased start endpoint.
pub type Handler =
    Arc<dyn Fn(DurableClient, HttpRequest) -> BoxFuture<'static, HttpResult> + Send + Sync>;

/// What answers a route.
#[derive(Clone)]
pub(crate) enum Target {
    /// A start endpoint.
    Start(Handler),
    /// The public status endpoint (`{id}`).
    Status,
    /// The management API (`{*rest}` after its base).
    Management,
    /// The dashboard's files.
    Dashboard,
    /// `/metrics`.
    Metrics,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// One route: its target, for which methods (none: any, the target checks), its
/// parameters' names in order, and where it was defined.
#[derive(Clone)]
pub(crate) struct Route {
    methods: Vec<Method>,
    /// Parameter names in order, and whether each is a catch-all (kept as sent).
    params: Vec<(String, bool)>,
    pub(crate) target: Target,
    pub(crate) pattern: String,
    /// The pattern as the metrics label (shared, not copied per request).
    pub(crate) label: std::sync::Arc<str>,
    location: String,
}

/// The routing table.
#[derive(Clone, Default)]
pub(crate) struct Router {
    /// Normalized patterns (parameters named by position) to an index in `paths`.
    tree: matchit::Router<usize>,
    /// The routes of each normalized pattern, one per method set.
    paths: Vec<Vec<Route>>,
    /// Normalized pattern to index, to add methods to a pattern already in the tree.
    shapes: HashMap<String, usize>,
}

/// The outcome of matching a request.
pub(crate) enum Match<'a> {
    Found(&'a Route, HashMap<String, String>),
    /// The path exists, but not for this method; the allowed methods and the pattern of
    /// the route the path matched.
    WrongMethod(Vec<Method>, String),
    None,
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Parses a route pattern like `/api/status/{id}` (host routes may end in `{*rest}`).
fn parse_pattern(pattern: &str, catch_all: bool) -> Result<Vec<Segment>, String> {
    if !pattern.starts_with('/') {
        return Err(format!("route '{pattern}' must start with '/'"));
    }
    let parts: Vec<&str> = split(pattern).collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (name, all) = match name.strip_prefix('*') {
                    Some(n) if catch_all && i + 1 == parts.len() => (n, true),
                    _ => (name, false),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("route '{pattern}' has an invalid parameter '{s}'"));
                }
                Ok(if all {
                    Segment::CatchAll(name.to_string())
                } else {
                    Segment::Param(name.to_string())
                })
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

/// The pattern with its parameters named by position, as the tree holds it: two routes
/// of the same shape share one entry whatever their parameters are called.
fn normalized(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        out.push('/');
        match s {
            Segment::Literal(l) => out.push_str(l),
            Segment::Param(_) => out.push_str(&format!("{{p{i}}}")),
            Segment::CatchAll(_) => out.push_str("{*rest}"),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

impl Router {
    /// Adds a start endpoint; a route with the same method and shape as an existing one
    /// is an error naming both definitions, and so is one under a host route.
    pub(crate) fn add(
        &mut self,
        methods: &[&str],
        pattern: &str,
        handler: Handler,
        location: &str,
    ) -> Result<(), String> {
        let mut parsed = Vec::new();
        for m in methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("route '{pattern}' has an invalid method '{m}'"))?;
            parsed.push(method);
        }
        if parsed.is_empty() {
            return Err(format!("route '{pattern}' needs at least one method"));
        }
        self.insert(parsed, pattern, Target::Start(handler), location, false)
    }

    /// Adds one of the host's own routes, for every method (its target checks them).
    pub(crate) fn add_host_route(&mut self, pattern: &str, target: Target) -> Result<(), String> {
        self.insert(Vec::new(), pattern, target, "the host's own routes", true)
    }

    fn insert(
        &mut self,
        methods: Vec<Method>,
        pattern: &str,
        target: Target,
        location: &str,
        catch_all: bool,
    ) -> Result<(), String> {
        let segments = parse_pattern(pattern, catch_all)?;
        let params = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some((n.clone(), false)),
                Segment::CatchAll(n) => Some((n.clone(), true)),
                Segment::Literal(_) => None,
            })
            .collect();
        let shape = normalized(&segments);
        let route = Route {
            methods,
            params,
            target,
            pattern: pattern.to_string(),
            label: pattern.into(),
            location: location.to_string(),
        };
        if let Some(&i) = self.shapes.get(&shape) {
            for r in &self.paths[i] {
                let overlap = if r.methods.is_empty() || route.methods.is_empty() {
                    r.methods.first().or(route.methods.first()).cloned()
                } else {
                    route
                        .methods
                        .iter()
                        .find(|m| r.methods.contains(m))
                        .cloned()
                };
                if r.methods.is_empty() || route.methods.is_empty() || overlap.is_some() {
                    let m = overlap.map(|m| format!("{m} ")).unwrap_or_default();
                    return Err(format!(
                        "routes collide: {m}{} ({}) and {m}{} ({})",
                        route.pattern, route.location, r.pattern, r.location
                    ));
                }
            }
            self.paths[i].push(route);
            return Ok(());
        }
        let i = self.paths.len();
        self.tree.insert(shape.clone(), i).map_err(|e| match e {
            matchit::InsertError::Conflict { with } => {
                let other = self.shapes.get(&with).and_then(|&j| self.paths[j].first());
                match other {
                    Some(o) => format!(
                        "routes collide: {} ({}) and {} ({})",
                        route.pattern, route.location, o.pattern, o.location
                    ),
                    None => format!("routes collide: {} ({})", route.pattern, route.location),
                }
            }
            e => format!("route '{}' ({}): {e}", route.pattern, route.location),
        })?;
        self.shapes.insert(shape, i);
        self.paths.push(vec![route]);
        Ok(())
    }

    /// Finds the route for a method and path.
    pub(crate) fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let mut norm = String::with_capacity(path.len());
        for s in split(path) {
            norm.push('/');
            norm.push_str(s);
        }
        if norm.is_empty() {
            norm.push('/');
        }
        let Ok(m) = self.tree.at(&norm) else {
            return Match::None;
        };
        let routes = &self.paths[*m.value];
        let Some(route) = routes
            .iter()
            .find(|r| r.methods.is_empty() || r.methods.contains(method))
        else {
            let allowed = routes.iter().flat_map(|r| r.methods.clone()).collect();
            return Match::WrongMethod(allowed, routes[0].pattern.clone());
        };
        let params = route
            .params
            .iter()
            .zip(m.params.iter())
            .map(|((name, all), (_, value))| {
                let value = if *all {
                    value.to_string()
                } else {
                    crate::request::percent_decode(value)
                };
                (name.clone(), value)
            })
            .collect();
        Match::Found(route, params)
    }

    /// Every start route as `METHOD pattern`, for the startup log.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.paths
            .iter()
            .flatten()
            .filter(|r| matches!(r.target, Target::Start(_)))
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
        assert!(
            r.add(&["GET"], "/api/{*rest}", h(), "d").is_err(),
            "no catch-all"
        );
    }

    #[test]
    fn routes_of_one_shape_keep_their_own_parameter_names() {
        let mut r = Router::default();
        r.add(&["GET"], "/jobs/{id}", h(), "a").unwrap();
        r.add(&["DELETE"], "/jobs/{job}", h(), "b").unwrap();
        r.add(&["GET"], "/jobs/{id}/steps/{step}", h(), "c")
            .unwrap();
        r.add(&["GET"], "/jobs/latest", h(), "d").unwrap();
        match r.find(&Method::DELETE, "/jobs/7") {
            Match::Found(route, p) => {
                assert_eq!(route.pattern, "/jobs/{job}");
                assert_eq!(p["job"], "7");
            }
            _ => panic!("no match"),
        }
        match r.find(&Method::GET, "//jobs/7/steps/x%2Fy/") {
            Match::Found(_, p) => assert_eq!((p["id"].as_str(), p["step"].as_str()), ("7", "x/y")),
            _ => panic!("no match"),
        }
        match r.find(&Method::GET, "/jobs/latest") {
            Match::Found(route, _) => assert_eq!(route.pattern, "/jobs/latest"),
            _ => panic!("no match"),
        }
        match r.find(&Method::PUT, "/jobs/7") {
            Match::WrongMethod(allowed, _) => assert_eq!(allowed, [Method::GET, Method::DELETE]),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn host_routes_take_every_method_and_refuse_start_routes_of_their_shape() {
        let mut r = Router::default();
        r.add_host_route("/metrics", Target::Metrics).unwrap();
        r.add_host_route("/admin/{*rest}", Target::Management)
            .unwrap();
        match r.find(&Method::PATCH, "/admin/a/b/c") {
            Match::Found(route, p) => {
                assert!(matches!(route.target, Target::Management));
                assert_eq!(p["rest"], "a/b/c");
            }
            _ => panic!("no match"),
        }
        match r.find(&Method::GET, "/admin/a%2Fb") {
            Match::Found(_, p) => {
                assert_eq!(p["rest"], "a%2Fb", "a catch-all is kept as sent");
            }
            _ => panic!("no match"),
        }
        let err = r.add(&["POST"], "/metrics", h(), "x.rs:9").unwrap_err();
        assert!(err.contains("x.rs:9") && err.contains("host"), "{err}");
    }
}
