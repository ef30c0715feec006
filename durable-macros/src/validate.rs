//! Validation: every check of an annotated function, collected so one build reports every
//! mistake. Produces the IR the expanders use.

use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::parse::Args;
use crate::Kind;

/// A validated durable function.
pub struct Function {
    pub item: ItemFn,
    pub name: String,
    pub version: Option<String>,
    /// The context parameter, when the function takes one.
    pub ctx: Option<Ident>,
    pub inputs: Vec<(Ident, Type)>,
    /// The declared return type (`()` when none).
    pub ret: Type,
    /// True when the return type's last path segment is `Result`.
    pub ret_is_result: bool,
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// Checks the options and the function signature.
pub fn validate(
    kind: Kind,
    args: Args,
    item: ItemFn,
    errors: &mut Vec<syn::Error>,
) -> Option<Function> {
    let start = errors.len();
    let mut name = item.sig.ident.to_string();
    let mut version = None;
    for opt in args.opts {
        let key = opt.key.to_string();
        let value = opt.value.value();
        match (key.as_str(), kind) {
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
                        "a version must be non-empty",
                    ));
                }
                version = Some(value);
            }
            _ => errors.push(syn::Error::new_spanned(
                &opt.key,
                format!(
                    "unknown {kind} option `{key}`; expected one of: {}",
                    kind.accepted_options().join(", ")
                ),
            )),
        }
    }

    let sig = &item.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            format!("{kind} functions must be `async fn`"),
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
            format!("{kind} functions cannot be `unsafe`"),
        ));
    }
    if let Some(a) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            a,
            format!("{kind} functions cannot be `extern`"),
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            format!("{kind} functions cannot be variadic"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            format!("{kind} functions cannot be generic or have lifetime parameters: durable names and payload types must be fixed"),
        ));
    }

    let ctx_type = kind.context_type();
    let mut ctx = None;
    let mut inputs = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        let pat_type = match arg {
            FnArg::Receiver(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    format!("{kind} functions cannot take `self`; write a free `async fn`"),
                ));
                continue;
            }
            FnArg::Typed(t) => t,
        };
        let ident = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            Pat::Wild(w) => Ident::new(&format!("__durable_arg{i}"), w.span()),
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("{kind} parameters must be plain names (`city: String`), not patterns"),
                ));
                continue;
            }
        };
        let is_ctx = last_segment(&pat_type.ty).as_deref() == Some(ctx_type);
        if is_ctx {
            if i != 0 {
                errors.push(syn::Error::new_spanned(
                    &pat_type.ty,
                    format!("the `{ctx_type}` must be the first parameter of {kind} functions"),
                ));
            } else {
                ctx = Some(ident);
            }
            continue;
        }
        match &*pat_type.ty {
            Type::Reference(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    format!("{kind} inputs must be owned types (they are deserialized); use String instead of &str, Vec<T> instead of &[T]"),
                ));
                continue;
            }
            Type::ImplTrait(t) => {
                errors.push(syn::Error::new_spanned(
                    t,
                    format!("{kind} inputs must be concrete serializable types, not `impl Trait`"),
                ));
                continue;
            }
            _ => {}
        }
        inputs.push((ident, (*pat_type.ty).clone()));
    }

    if kind == Kind::Orchestrator {
        if ctx.is_none() && errors.len() == start {
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
                    format!("{kind} functions must return a concrete type, e.g. Result<T, E>"),
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
        ctx,
        inputs,
        ret,
        ret_is_result,
    })
}

/// A validated `#[http_start]` function.
pub struct HttpStart {
    pub item: ItemFn,
    pub route: String,
    pub methods: Vec<String>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Checks an `#[http_start]` function and its options.
pub fn validate_http_start(
    args: Args,
    item: ItemFn,
    errors: &mut Vec<syn::Error>,
) -> Option<HttpStart> {
    let kind = Kind::HttpStart;
    let start = errors.len();
    let mut route = None;
    let mut methods = Vec::new();
    for opt in args.opts {
        let key = opt.key.to_string();
        let value = opt.value.value();
        match key.as_str() {
            "route" => {
                if !value.starts_with('/') {
                    errors.push(syn::Error::new_spanned(
                        &opt.value,
                        "a route must start with '/', e.g. \"/api/hello\"",
                    ));
                }
                route = Some(value);
            }
            "method" | "methods" => {
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
            }
            _ => errors.push(syn::Error::new_spanned(
                &opt.key,
                format!(
                    "unknown {kind} option `{key}`; expected one of: {}",
                    kind.accepted_options().join(", ")
                ),
            )),
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
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "#[http_start] functions must be `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "#[http_start] functions cannot be generic",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        errors.push(syn::Error::new_spanned(
            r,
            "#[http_start] functions cannot take `self`",
        ));
    }
    if sig.inputs.len() != 2 {
        errors.push(syn::Error::new_spanned(
            &sig.inputs,
            "#[http_start] functions take exactly `client: DurableClient, req: HttpRequest`",
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
