//! Parsing: the attribute's options and the annotated item, into a small IR that keeps
//! the original tokens for spans. Nothing is judged here beyond syntax.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, ItemFn, ItemImpl, Lit, LitStr, Meta, Token};

use crate::kind::Kind;

/// One `key = "value"` option.
pub struct Opt {
    pub key: Ident,
    pub value: LitStr,
}

/// The parsed attribute arguments.
pub struct Args {
    pub opts: Vec<Opt>,
}

/// The annotated item.
pub enum Item {
    Fn(ItemFn),
    /// Only `#[entity]` accepts an `impl` block.
    Impl(ItemImpl),
}

/// Parses `key = "value", ...`; malformed options become errors in `errors` and the
/// well-formed ones are still returned, so their own checks run too.
pub fn parse_args(kind: Kind, attr: TokenStream, errors: &mut Vec<syn::Error>) -> Args {
    let accepted = kind.accepted_options().join(", ");
    let mut opts: Vec<Opt> = Vec::new();
    let parser = Punctuated::<Meta, Token![,]>::parse_terminated;
    let metas = match parser.parse2(attr) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!(
                    "{kind} options are written `key = \"value\"`, separated by commas (accepted keys: {accepted})"
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
                        format!("{kind} option names are single words (accepted keys: {accepted})"),
                    ));
                    continue;
                };
                let value = match nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(value),
                        ..
                    }) => value,
                    other => {
                        errors.push(syn::Error::new_spanned(
                            other,
                            format!(
                                "the value of `{key}` must be a string literal, e.g. {key} = \"...\""
                            ),
                        ));
                        continue;
                    }
                };
                if opts.iter().any(|o| o.key == key) {
                    errors.push(syn::Error::new_spanned(
                        &key,
                        format!("{kind} option `{key}` is given twice; keep one"),
                    ));
                    continue;
                }
                opts.push(Opt { key, value });
            }
            other => errors.push(syn::Error::new_spanned(
                other,
                format!("expected `key = \"value\"` (accepted keys: {accepted})"),
            )),
        }
    }
    Args { opts }
}

/// Parses the annotated item: a function for every kind, or an `impl` block for
/// `#[entity]`. Anything else is one error at the item's first token.
pub fn parse_item(kind: Kind, item: TokenStream) -> Result<Item, syn::Error> {
    let wrong = || {
        let what = match kind {
            Kind::Entity => "an `impl State { ... }` block or an `async fn(ctx: EntityContext<State>, op: Operation)`",
            _ => "an `async fn`",
        };
        syn::Error::new(first_span(&item), format!("{kind} goes on {what}"))
    };
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(f)) => Ok(Item::Fn(f)),
        Ok(syn::Item::Impl(i)) if kind == Kind::Entity => Ok(Item::Impl(i)),
        _ => Err(wrong()),
    }
}

fn first_span(ts: &TokenStream) -> Span {
    ts.clone()
        .into_iter()
        .next()
        .map(|t| t.span())
        .unwrap_or_else(Span::call_site)
}

impl Item {
    /// The item's name: the function's, or the state type's for an `impl` block.
    pub fn name(&self) -> Option<String> {
        match self {
            Item::Fn(f) => Some(f.sig.ident.to_string()),
            Item::Impl(i) => match &*i.self_ty {
                syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                _ => None,
            },
        }
    }
}

impl quote::ToTokens for Item {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Item::Fn(f) => f.to_tokens(tokens),
            Item::Impl(i) => i.to_tokens(tokens),
        }
    }
}
