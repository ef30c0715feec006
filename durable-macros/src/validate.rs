//! Validation: every check of an annotated item, collected so one build reports every
//! mistake, each spanned at the offending token and saying what is accepted. Produces
//! the IR the expanders use; returns `None` when anything was wrong.

use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ItemFn, ItemImpl, Pat, ReturnType, Signature, Type};

use crate::kind::Kind;
use crate::parse::{Args, Item};

/// A validated item, ready to expand.
pub enum Validated {
    Activity(Function),
    Orchestrator(Function),
    HttpStart(HttpStart),
    EntityImpl(EntityImpl),
    EntityFn(EntityFn),
}

/// A validated `#[activity]` or `#[orchestrator]` function.
pub struct Function {
    pub item: ItemFn,
    pub name: String,
    pub version: Option<String>,
    /// An activity's default start-to-close timeout (`timeout = "30s"`), in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The context parameter, when the function takes one.
    pub ctx: Option<Ident>,
    pub inputs: Vec<(Ident, Type)>,
    /// The declared return type (`()` when none).
    pub ret: Type,
    /// True when the return type's last path segment is `Result`.
    pub ret_is_result: bool,
}

/// A validated `#[http_start]` function.
pub struct HttpStart {
    pub item: ItemFn,
    pub route: String,
    pub methods: Vec<String>,
}

/// A validated `#[entity]` impl block.
pub struct EntityImpl {
    pub item: ItemImpl,
    pub name: String,
    /// The state type's name, used to name the generated proxies.
    pub type_name: Ident,
    pub ops: Vec<Op>,
}

/// One operation of an `#[entity]` impl block: a public method.
pub struct Op {
    pub ident: Ident,
    pub input: Option<(Ident, Type)>,
    pub takes_ctx: bool,
    pub is_async: bool,
    pub ret: Type,
    pub ret_is_result: bool,
}

/// A validated function-style `#[entity]`.
pub struct EntityFn {
    pub item: ItemFn,
    pub name: String,
}

/// The context types of all kinds, to tell a user who passed the wrong one.
const CONTEXT_TYPES: &[&str] = &[
    "ActivityContext",
    "OrchestrationContext",
    "EntityContext",
    "DurableClient",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Checks the options and the item of one attribute.
pub fn validate(
    kind: Kind,
    args: Args,
    item: Item,
    errors: &mut Vec<syn::Error>,
) -> Option<Validated> {
    let start = errors.len();
    let out = match (kind, item) {
        (Kind::Activity, Item::Fn(f)) => durable_fn(kind, args, f, errors).map(Validated::Activity),
        (Kind::Orchestrator, Item::Fn(f)) => {
            durable_fn(kind, args, f, errors).map(Validated::Orchestrator)
        }
        (Kind::HttpStart, Item::Fn(f)) => http_start(args, f, errors).map(Validated::HttpStart),
        (Kind::Entity, Item::Fn(f)) => entity_fn(args, f, errors).map(Validated::EntityFn),
        (Kind::Entity, Item::Impl(i)) => entity_impl(args, i, errors).map(Validated::EntityImpl),
        // The parser accepts `impl` blocks only for #[entity].
        (_, Item::Impl(i)) => {
            errors.push(syn::Error::new_spanned(
                i.impl_token,
                format!("{kind} goes on an `async fn`"),
            ));
            None
        }
    };
    if errors.len() > start {
        None
    } else {
        out
    }
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// The `name = "..."` option (and `version` for orchestrators, `timeout` for activities,
/// in milliseconds); unknown keys are errors.
fn name_and_version(
    kind: Kind,
    args: Args,
    default: String,
    errors: &mut Vec<syn::Error>,
) -> (String, Option<String>, Option<u64>) {
    let mut name = default;
    let mut version = None;
    let mut timeout = None;
    for opt in args.opts {
        let key = opt.key.to_string();
        let value = opt.value.value();
        match (key.as_str(), kind) {
            ("name", Kind::Entity) => {
                if value.trim().is_empty() || value.contains(['@', ' ']) {
                    errors.push(syn::Error::new_spanned(
                        &opt.value,
                        "an entity name must be non-empty, without '@' or spaces",
                    ));
                }
                name = value;
            }
            ("name", _) => {
                if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
                    errors.push(syn::Error::new_spanned(
                        &opt.value,
                        "a durable name must be non-empty and contain no whitespace",
                    ));
                }
                name = value;
            }
            ("version", Kind::Orchestrator) => {
                if value.trim().is_empty() {
                    errors.push(syn::Error::new_spanned(
                        &opt.value,
                        "a version must be non-empty, e.g. version = \"2\"",
                    ));
                }
                version = Some(value);
            }
            ("timeout", Kind::Activity) => match parse_duration_ms(&value) {
                Some(ms) => timeout = Some(ms),
                None => errors.push(syn::Error::new_spanned(
                    &opt.value,
                    "a timeout is a whole number above 0 followed by ms, s, m or h, e.g. timeout = \"30s\"",
                )),
            },
            _ => errors.push(unknown_option(kind, &opt.key)),
        }
    }
    (name, version, timeout)
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"` in milliseconds; None for anything else, zero, or
/// more than a year.
fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    let ms = n.checked_mul(scale)?;
    (ms > 0 && ms <= 366 * 24 * 3_600_000).then_some(ms)
}

fn unknown_option(kind: Kind, key: &Ident) -> syn::Error {
    syn::Error::new_spanned(
        key,
        format!(
            "unknown {kind} option `{key}`; expected one of: {}",
            kind.accepted_options().join(", ")
        ),
    )
}

/// Checks shared by every function-shaped kind: `async`, and none of the modifiers or
/// generics that a registered entry point cannot have.
fn check_signature(kind: Kind, sig: &Signature, errors: &mut Vec<syn::Error>) {
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            format!(
                "{kind} functions must be `async fn`; accepted: {}",
                kind.accepted_shape()
            ),
        ));
    }
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            c,
            format!("{kind} functions cannot be `const`"),
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            format!("{kind} functions cannot be `unsafe`: the runtime calls them with no caller to uphold a contract"),
        ));
    }
    if let Some(a) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            a,
            format!("{kind} functions cannot be `extern`; write a plain `async fn`"),
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            format!("{kind} functions cannot be variadic; pass a Vec or a tuple"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            format!(
                "{kind} functions cannot be generic or have lifetime parameters: {}",
                if kind == Kind::HttpStart {
                    "the host calls them with fixed types"
                } else {
                    "durable names and payload types must be fixed"
                }
            ),
        ));
    }
}

fn durable_fn(
    kind: Kind,
    args: Args,
    item: ItemFn,
    errors: &mut Vec<syn::Error>,
) -> Option<Function> {
    let start = errors.len();
    let (name, version, timeout_ms) =
        name_and_version(kind, args, item.sig.ident.to_string(), errors);
    let sig = &item.sig;
    check_signature(kind, sig, errors);

    let ctx_type = kind.context_type();
    let mut ctx = None;
    let mut inputs = Vec::new();
    let mut params_ok = true;
    // Position among the typed parameters (a `self` is reported on its own).
    let mut i = 0usize;
    for arg in sig.inputs.iter() {
        let pat_type = match arg {
            FnArg::Receiver(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    format!("{kind} functions cannot take `self`; write a free `async fn`"),
                ));
                params_ok = false;
                continue;
            }
            FnArg::Typed(t) => t,
        };
        i += 1;
        let i = i - 1;
        let ident = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            Pat::Wild(w) => Ident::new(&format!("__durable_arg{i}"), w.span()),
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("{kind} parameters must be plain names (`city: String`), not patterns; destructure inside the body"),
                ));
                params_ok = false;
                continue;
            }
        };
        let segment = last_segment(&pat_type.ty);
        if segment.as_deref() == Some(ctx_type) {
            if i != 0 {
                errors.push(syn::Error::new_spanned(
                    &pat_type.ty,
                    format!("the `{ctx_type}` must be the first parameter of {kind} functions; accepted: {}", kind.accepted_shape()),
                ));
                params_ok = false;
            } else {
                ctx = Some(ident);
            }
            continue;
        }
        if let Some(other) = segment
            .as_deref()
            .filter(|s| CONTEXT_TYPES.contains(s) && *s != ctx_type)
        {
            errors.push(syn::Error::new_spanned(
                &pat_type.ty,
                format!(
                    "{kind} functions take an `{ctx_type}`, not an `{other}`; accepted: {}",
                    kind.accepted_shape()
                ),
            ));
            params_ok = false;
            continue;
        }
        match &*pat_type.ty {
            Type::Reference(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    format!("{kind} inputs must be owned types (they are deserialized); use String instead of &str, Vec<T> instead of &[T]"),
                ));
                params_ok = false;
                continue;
            }
            Type::ImplTrait(t) => {
                errors.push(syn::Error::new_spanned(
                    t,
                    format!("{kind} inputs must be concrete serializable types, not `impl Trait`"),
                ));
                params_ok = false;
                continue;
            }
            _ => {}
        }
        inputs.push((ident, (*pat_type.ty).clone()));
    }

    if kind == Kind::Orchestrator {
        if ctx.is_none() && params_ok {
            errors.push(syn::Error::new_spanned(
                &sig.inputs,
                "#[orchestrator] functions take `ctx: OrchestrationContext` first, then at most one input: `async fn name(ctx: OrchestrationContext, input: I) -> Result<O, E>`",
            ));
        }
        if inputs.len() > 1 {
            errors.push(syn::Error::new_spanned(
                &inputs[1].1,
                "#[orchestrator] functions take at most one input after the context; pass a struct or a tuple to carry more",
            ));
        }
    }

    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(t) = &**ty {
                errors.push(syn::Error::new_spanned(
                    t,
                    format!("{kind} functions must return a concrete type, e.g. Result<T, E>, not `impl Trait`"),
                ));
            }
            (**ty).clone()
        }
    };
    let ret_is_result = last_segment(&ret).as_deref() == Some("Result");

    if errors.len() > start {
        return None;
    }
    Some(Function {
        item,
        name,
        version,
        timeout_ms,
        ctx,
        inputs,
        ret,
        ret_is_result,
    })
}

/// Checks an `#[http_start]` function and its options.
fn http_start(args: Args, item: ItemFn, errors: &mut Vec<syn::Error>) -> Option<HttpStart> {
    let kind = Kind::HttpStart;
    let start = errors.len();
    let mut route = None;
    let mut methods = Vec::new();
    for opt in args.opts {
        let value = opt.value.value();
        if opt.key == "route" {
            if !value.starts_with('/') {
                errors.push(syn::Error::new_spanned(
                    &opt.value,
                    "a route must start with '/', e.g. \"/api/hello\"",
                ));
            }
            route = Some(value);
        } else if opt.key == "method" || opt.key == "methods" {
            if !methods.is_empty() {
                errors.push(syn::Error::new_spanned(
                    &opt.key,
                    "give either `method` or `methods`, not both (`methods = \"GET, POST\"` lists several)",
                ));
                continue;
            }
            let before = methods.len();
            for m in value
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty())
            {
                if !METHODS.contains(&m.as_str()) {
                    errors.push(syn::Error::new_spanned(
                        &opt.value,
                        format!(
                            "unknown HTTP method `{m}`; expected one of: {}",
                            METHODS.join(", ")
                        ),
                    ));
                }
                methods.push(m);
            }
            if methods.len() == before {
                errors.push(syn::Error::new_spanned(
                    &opt.value,
                    format!(
                        "`{}` names no HTTP method; expected one or more of: {} (default: POST)",
                        opt.key,
                        METHODS.join(", ")
                    ),
                ));
            }
        } else {
            errors.push(unknown_option(kind, &opt.key));
        }
    }
    if route.is_none() {
        errors.push(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[http_start] needs a route: #[http_start(route = \"/api/hello\", method = \"POST\")]",
        ));
    }
    if methods.is_empty() {
        methods.push("POST".into());
    }
    let sig = &item.sig;
    check_signature(kind, sig, errors);
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        errors.push(syn::Error::new_spanned(
            r,
            "#[http_start] functions cannot take `self`; write a free `async fn`",
        ));
    } else if sig.inputs.len() != 2 {
        errors.push(syn::Error::new(
            if sig.inputs.is_empty() {
                sig.paren_token.span.join()
            } else {
                sig.inputs.span()
            },
            format!(
                "#[http_start] functions take exactly two parameters, `client: DurableClient, req: HttpRequest`; accepted: {}",
                kind.accepted_shape()
            ),
        ));
    }
    if errors.len() > start {
        return None;
    }
    Some(HttpStart {
        item,
        route: route.unwrap_or_default(),
        methods,
    })
}

/// Checks a function-style `#[entity]`.
fn entity_fn(args: Args, item: ItemFn, errors: &mut Vec<syn::Error>) -> Option<EntityFn> {
    let kind = Kind::Entity;
    let start = errors.len();
    let (name, _, _) = name_and_version(kind, args, item.sig.ident.to_string(), errors);
    let sig = &item.sig;
    check_signature(kind, sig, errors);
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        errors.push(syn::Error::new_spanned(
            r,
            "#[entity] functions cannot take `self`; write a free `async fn(ctx: EntityContext<State>, op: Operation)`",
        ));
    } else if sig.inputs.len() != 2 {
        errors.push(syn::Error::new(
            if sig.inputs.is_empty() {
                sig.paren_token.span.join()
            } else {
                sig.inputs.span()
            },
            "#[entity] functions take exactly `ctx: EntityContext<State>, op: Operation`",
        ));
    }
    if errors.len() > start {
        return None;
    }
    Some(EntityFn {
        item,
        name: name.to_lowercase(),
    })
}

fn type_ident(ty: &Type) -> Option<Ident> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        Type::Group(g) => type_ident(&g.elem),
        Type::Paren(p) => type_ident(&p.elem),
        _ => None,
    }
}

/// Checks an `#[entity]` impl block: the state type and every public method.
fn entity_impl(args: Args, item: ItemImpl, errors: &mut Vec<syn::Error>) -> Option<EntityImpl> {
    let kind = Kind::Entity;
    let start = errors.len();
    let type_name = type_ident(&item.self_ty);
    if type_name.is_none() {
        errors.push(syn::Error::new_spanned(
            &item.self_ty,
            "#[entity] goes on the impl block of a named state type: `impl Counter { ... }`",
        ));
    }
    let default = type_name.as_ref().map(Ident::to_string).unwrap_or_default();
    let (name, _, _) = name_and_version(kind, args, default, errors);
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            item.generics.span(),
            "#[entity] state types cannot be generic: an entity name stands for one state type",
        ));
    }
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "#[entity] goes on an inherent `impl State { ... }` block, not a trait impl",
        ));
    }
    if let Some(u) = &item.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "#[entity] goes on a plain `impl State { ... }` block, not an `unsafe impl`",
        ));
    }
    let mut ops = Vec::new();
    for it in &item.items {
        let ImplItem::Fn(f) = it else { continue };
        if !matches!(f.vis, syn::Visibility::Public(_)) {
            continue;
        }
        if let Some(op) = entity_op(&f.sig, errors) {
            ops.push(op);
        }
    }
    if errors.len() > start {
        return None;
    }
    Some(EntityImpl {
        item,
        name: name.to_lowercase(),
        type_name: type_name?,
        ops,
    })
}

/// Checks one public method of an `#[entity]` impl block.
fn entity_op(sig: &Signature, errors: &mut Vec<syn::Error>) -> Option<Op> {
    let start = errors.len();
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() => {}
        Some(FnArg::Receiver(r)) => {
            errors.push(syn::Error::new_spanned(
                r,
                "entity operations take `&self` or `&mut self`, not `self`: the state is kept after the operation",
            ));
        }
        _ => {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                "public methods of an #[entity] impl are operations and take `&self` or `&mut self`; make helper functions private (or move them to another impl block)",
            ));
            return None;
        }
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "entity operations cannot be generic: their input and output types must be fixed",
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "entity operations cannot be `unsafe`: they are called by name from messages",
        ));
    }
    if let Some(a) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            a,
            "entity operations cannot be `extern`",
        ));
    }
    let mut takes_ctx = false;
    let mut input = None;
    for (i, arg) in inputs.enumerate() {
        let FnArg::Typed(t) = arg else { continue };
        if type_ident_deref(&t.ty).as_deref() == Some("EntityContext") {
            if i != 0 {
                errors.push(syn::Error::new_spanned(
                    &t.ty,
                    "the `&EntityContext<State>` must come right after `self`: `fn op(&mut self, ctx: &EntityContext<Self>, input: I)`",
                ));
            }
            takes_ctx = true;
            continue;
        }
        if input.is_some() {
            errors.push(syn::Error::new_spanned(
                &t.ty,
                "entity operations take at most one input; pass a struct or a tuple to carry more",
            ));
            continue;
        }
        match &*t.ty {
            Type::Reference(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "entity operation inputs must be owned types (they are deserialized); use String instead of &str, Vec<T> instead of &[T]",
                ));
                continue;
            }
            Type::ImplTrait(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "entity operation inputs must be concrete serializable types, not `impl Trait`",
                ));
                continue;
            }
            _ => {}
        }
        let ident = match &*t.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => Ident::new("__durable_input", t.pat.span()),
        };
        input = Some((ident, (*t.ty).clone()));
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => {
            if let Type::ImplTrait(r) = &**t {
                errors.push(syn::Error::new_spanned(
                    r,
                    "entity operations must return a concrete type, e.g. Result<T, E>, not `impl Trait`",
                ));
            }
            (**t).clone()
        }
    };
    if errors.len() > start {
        return None;
    }
    let ret_is_result = last_segment(&ret).as_deref() == Some("Result");
    Some(Op {
        ident: sig.ident.clone(),
        input,
        takes_ctx,
        is_async: sig.asyncness.is_some(),
        ret,
        ret_is_result,
    })
}

/// The last segment of a type, looking through references (`&EntityContext<Self>`).
fn type_ident_deref(ty: &Type) -> Option<String> {
    match ty {
        Type::Reference(r) => type_ident_deref(&r.elem),
        other => last_segment(other),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn timeouts() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms(" 5m "), Some(300_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        for bad in [
            "",
            "s",
            "0s",
            "30",
            "30 s",
            "1.5s",
            "-1s",
            "30sec",
            "9999999999999999999h",
            "9000h",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }
}
