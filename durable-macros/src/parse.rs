//! Parsing: the attribute's options and the annotated function, into a small IR that
//! keeps the original tokens for spans.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, ItemFn, Lit, LitStr, Meta, Token};

use crate::Kind;

/// One `key = "value"` option.
pub struct Opt {
    pub key: Ident,
    pub value: LitStr,
}

/// The parsed attribute arguments.
pub struct Args {
    pub opts: Vec<Opt>,
}

/// Parses `key = "value", ...`; malformed options become errors in `errors`.
pub fn parse_args(kind: Kind, attr: TokenStream, errors: &mut Vec<syn::Error>) -> Args {
    let mut opts = Vec::new();
    let parser = Punctuated::<Meta, Token![,]>::parse_terminated;
    let metas = match parser.parse2(attr) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!(
                    "{kind} options are written `key = \"value\"`, separated by commas (accepted keys: {})",
                    kind.accepted_options().join(", ")
                ),
            ));
            return Args { opts };
        }
    };
    for meta in metas {
        match meta {
            Meta::NameValue(nv) => {
                let Some(key) = nv.path.get_ident().cloned() else {
                    errors.push(syn::Error::new_spanned(
                        &nv.path,
                        "expected a simple option name",
                    ));
                    continue;
                };
                match nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(value),
                        ..
                    }) => opts.push(Opt { key, value }),
                    other => errors.push(syn::Error::new_spanned(
                        other,
                        format!(
                            "the value of `{key}` must be a string literal, e.g. {key} = \"...\""
                        ),
                    )),
                }
            }
            other => errors.push(syn::Error::new_spanned(
                other,
                format!(
                    "expected `key = \"value\"` (accepted keys: {})",
                    kind.accepted_options().join(", ")
                ),
            )),
        }
    }
    Args { opts }
}

/// Parses the item as a function; anything else is one error at the item.
pub fn parse_fn(kind: Kind, item: TokenStream) -> Result<ItemFn, syn::Error> {
    syn::parse2::<ItemFn>(item.clone())
        .map_err(|_| syn::Error::new(first_span(&item), format!("{kind} goes on an `async fn`")))
}

fn first_span(ts: &TokenStream) -> Span {
    ts.clone()
        .into_iter()
        .next()
        .map(|t| t.span())
        .unwrap_or_else(Span::call_site)
}
