//! The one pipeline every attribute runs: parse -> (determinism, for orchestrators) ->
//! validate -> expand. Works on `proc_macro2` token streams so it runs in unit tests
//! (the expansion snapshots) as well as in the compiler.
//!
//! Every error of one expansion is collected and reported together. When anything is
//! wrong, the user's item is emitted unchanged next to the errors (only the registration
//! is skipped), so the rest of the crate keeps compiling and no follow-on errors appear.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

use crate::kind::Kind;
use crate::parse::Item;
use crate::{determinism, expand, parse, validate};

/// The environment variable that makes every expansion print to stderr at compile time.
pub const DEBUG_ENV: &str = "DURABLE_MACROS_DEBUG";

/// Runs the pipeline and, when `DURABLE_MACROS_DEBUG` asks for it, prints the expansion.
pub fn expand(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let debug = std::env::var(DEBUG_ENV).ok();
    let name = debug.as_ref().and_then(|_| {
        parse::parse_item(kind, item.clone())
            .ok()
            .and_then(|i| i.name())
    });
    let out = run(kind, attr, item);
    if let Some(filter) = debug {
        if should_print(&filter, name.as_deref()) {
            eprintln!("{}", debug_format(kind, name.as_deref(), &out));
        }
    }
    out
}

/// Parse, check and generate; never panics. Errors come out as `compile_error!`s.
pub fn run(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let args = parse::parse_args(kind, attr, &mut errors);
    let mut parsed = match parse::parse_item(kind, item.clone()) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return with_errors(item, errors);
        }
    };
    let mut warnings = TokenStream::new();
    if let (Kind::Orchestrator, Item::Fn(f)) = (kind, &mut parsed) {
        // Also strips the `#[nondeterministic]` markers, so the item as emitted compiles.
        let (found, warn) = determinism::check(&mut f.block);
        errors.extend(found);
        warnings = warn;
    }
    let original = parsed.to_token_stream();
    let mut out = match validate::validate(kind, args, parsed, &mut errors) {
        Some(v) if errors.is_empty() => expand::expand(v),
        _ => original,
    };
    out.extend(warnings);
    with_errors(out, errors)
}

fn with_errors(mut out: TokenStream, errors: Vec<syn::Error>) -> TokenStream {
    if let Some(e) = errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    }) {
        out.extend(e.to_compile_error());
    }
    out
}

/// `DURABLE_MACROS_DEBUG=1` (or any value but `0` and the empty string) prints every
/// expansion; any other value that is an item's name prints only that item's.
pub fn should_print(filter: &str, name: Option<&str>) -> bool {
    match filter.trim() {
        "" | "0" => false,
        "1" | "true" | "all" => true,
        f => name == Some(f),
    }
}

/// The text `DURABLE_MACROS_DEBUG` prints: a header naming the attribute and the item,
/// then the generated code laid out one item and statement per line.
pub fn debug_format(kind: Kind, name: Option<&str>, tokens: &TokenStream) -> String {
    let mut out = format!(
        "// ---- {kind} {} expanded to:\n",
        name.unwrap_or("(unnamed item)")
    );
    let mut w = Layout::new(true);
    w.stream(tokens.clone());
    for line in w.out.lines() {
        if !line.trim().is_empty() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out.push_str("// ----\n");
    out
}

/// A small token layout for debug output: braces open indented blocks, `;` and
/// attributes end lines; other tokens are separated by single spaces, except around
/// `::`, `.`, and before `,`, `;`, `:`, `?`.
struct Layout {
    out: String,
    indent: usize,
    line_start: bool,
}

/// What was written last, to decide on a space before the next token.
#[derive(Clone, PartialEq)]
enum Prev {
    Start,
    Word(String),
    Punct(char, Spacing),
    Group,
}

/// Words after which `::` and `(` keep their space (plus the arrows, recorded as words).
const KEYWORDS: &[&str] = &[
    "->", "=>", "as", "async", "const", "dyn", "else", "fn", "for", "if", "impl", "in", "let",
    "match", "move", "mut", "pub", "ref", "return", "static", "struct", "type", "unsafe", "use",
    "where",
];

impl Layout {
    fn new(line_start: bool) -> Self {
        Layout {
            out: String::new(),
            indent: 0,
            line_start,
        }
    }

    fn newline(&mut self) {
        if !self.line_start {
            self.out.push('\n');
            self.line_start = true;
        }
    }

    fn word(&mut self, s: &str, space_before: bool) {
        if self.line_start {
            self.out.push_str(&"    ".repeat(self.indent));
            self.line_start = false;
        } else if space_before {
            self.out.push(' ');
        }
        self.out.push_str(s);
    }

    fn stream(&mut self, ts: TokenStream) {
        let mut prev = Prev::Start;
        // Open `<` of generics (after a type-like word or `::`), and whether we are
        // between the pipes of a closure's parameters.
        let mut generics = 0usize;
        let mut closure_params = false;
        let mut after_brace = false;
        for tt in ts {
            if after_brace {
                after_brace = false;
                let hugs = matches!(&tt, TokenTree::Punct(p) if matches!(p.as_char(), ';' | ',' | '.' | '?'));
                if !hugs {
                    self.newline();
                    prev = Prev::Start;
                }
            }
            // No space after `.`, `&`, `#`, the second `:` of `::`, or any joint punct.
            let glued = match &prev {
                Prev::Start => true,
                Prev::Punct(c, spacing) => {
                    *spacing == Spacing::Joint || matches!(c, '.' | '&' | '#' | '\u{0}')
                }
                _ => false,
            };
            let word_before = matches!(&prev, Prev::Word(w) if !KEYWORDS.contains(&w.as_str()));
            match tt {
                TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                    self.word("{", !glued);
                    self.indent += 1;
                    self.newline();
                    self.stream(g.stream());
                    self.indent -= 1;
                    self.newline();
                    self.word("}", false);
                    after_brace = true;
                    prev = Prev::Group;
                }
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Bracket => ("[", "]"),
                        _ => ("", ""),
                    };
                    // Calls and indexing hug their callee; `#[..]` hugs its `#`.
                    let hug = glued
                        || word_before
                        || prev == Prev::Group
                        || prev == Prev::Punct('!', Spacing::Alone);
                    self.word(open, !hug);
                    let inner = g.stream();
                    let mut flat = Layout::new(false);
                    flat.stream(inner.clone());
                    if flat.out.contains('\n') {
                        // A block inside the group (a closure, an `async move {}`).
                        self.indent += 1;
                        self.newline();
                        self.stream(inner);
                        self.indent -= 1;
                        self.newline();
                        self.word(close, false);
                    } else {
                        self.out.push_str(&flat.out);
                        self.word(close, false);
                    }
                    if matches!(prev, Prev::Punct('#', _)) {
                        self.newline();
                        prev = Prev::Start;
                    } else {
                        prev = Prev::Group;
                    }
                }
                TokenTree::Punct(p) => {
                    let c = p.as_char();
                    let joint = p.spacing() == Spacing::Joint;
                    let type_like = matches!(&prev, Prev::Word(w) if w.starts_with(|c: char| c.is_ascii_uppercase()))
                        || prev == Prev::Punct('\u{0}', Spacing::Alone);
                    let space = match c {
                        ',' | ';' | '.' | '?' => false,
                        // The first `:` of `::` after a path segment hugs it; a lone `:` too.
                        ':' => joint && !glued && !word_before && prev != Prev::Group,
                        '<' if !joint && type_like => false,
                        '>' if !joint && generics > 0 => false,
                        '!' if !joint && word_before => false,
                        '|' if closure_params => false,
                        _ => !glued,
                    };
                    self.word(&c.to_string(), space);
                    let mut next = Prev::Punct(c, p.spacing());
                    match c {
                        ':' if matches!(prev, Prev::Punct(':', Spacing::Joint)) => {
                            // The second `:` of `::` hugs what follows.
                            next = Prev::Punct('\u{0}', Spacing::Alone);
                        }
                        '>' if matches!(prev, Prev::Punct('-', Spacing::Joint)) => {
                            next = Prev::Word("->".into());
                        }
                        '>' if matches!(prev, Prev::Punct('=', Spacing::Joint)) => {
                            next = Prev::Word("=>".into());
                        }
                        '<' if !joint && type_like => {
                            generics += 1;
                            next = Prev::Punct('\u{0}', Spacing::Alone);
                        }
                        '>' if !joint && generics > 0 => {
                            generics -= 1;
                            next = Prev::Group;
                        }
                        '|' if closure_params => {
                            closure_params = false;
                            next = Prev::Word("|".into());
                        }
                        '|' if !joint
                            && matches!(&prev, Prev::Start | Prev::Punct(',' | '=', _))
                            || matches!(&prev, Prev::Word(w) if w == "move") =>
                        {
                            closure_params = true;
                            next = Prev::Punct('\u{0}', Spacing::Alone);
                        }
                        ';' => {
                            self.newline();
                            next = Prev::Start;
                        }
                        _ => {}
                    }
                    prev = next;
                }
                other => {
                    let text = other.to_string();
                    self.word(&text, !glued);
                    prev = Prev::Word(text);
                }
            }
        }
        if after_brace {
            self.newline();
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    #[test]
    fn debug_env_values() {
        assert!(!should_print("", Some("hello")));
        assert!(!should_print("0", Some("hello")));
        assert!(should_print("1", Some("hello")));
        assert!(should_print("all", None));
        assert!(should_print("hello", Some("hello")));
        assert!(!should_print("hello", Some("other")));
    }

    #[test]
    fn debug_output_is_laid_out_one_statement_per_line() {
        let tokens = quote! {
            #[allow(dead_code)]
            pub struct hello;
            const _: () = {
                fn __durable_invoke(x: ::core::option::Option<u8>) -> ::std::string::String {
                    let y = x.map(|v| v + 1).unwrap_or(0);
                    ::std::format!("{}", y)
                }
            };
        };
        let text = debug_format(Kind::Orchestrator, Some("hello"), &tokens);
        let expected = "\
// ---- #[orchestrator] hello expanded to:
#[allow(dead_code)]
pub struct hello;
const _: () = {
    fn __durable_invoke(x: ::core::option::Option<u8>) -> ::std::string::String {
        let y = x.map(|v| v + 1).unwrap_or(0);
        ::std::format!(\"{}\", y)
    }
};
// ----
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn anything_in_gives_tokens_out_without_panicking() {
        let cases = [
            (Kind::Activity, quote!(), quote!()),
            (
                Kind::Activity,
                quote!(= "x"),
                quote!(
                    struct S;
                ),
            ),
            (
                Kind::Orchestrator,
                quote!(name),
                quote!(
                    fn f() {}
                ),
            ),
            (
                Kind::Entity,
                quote!(a::b = "c"),
                quote!(
                    impl (u8, u8) {}
                ),
            ),
            (
                Kind::Entity,
                quote!(name = 3),
                quote!(
                    trait T {}
                ),
            ),
            (
                Kind::HttpStart,
                quote!(method = ""),
                quote!(
                    async fn f(self) {}
                ),
            ),
        ];
        for (kind, attr, item) in cases {
            let out = run(kind, attr, item).to_string();
            assert!(out.contains("compile_error"), "{kind}: {out}");
        }
    }

    #[test]
    fn the_item_is_kept_when_validation_fails() {
        let out = run(
            Kind::Orchestrator,
            quote!(versoin = "2"),
            quote!(
                async fn hello(ctx: OrchestrationContext) {}
            ),
        )
        .to_string();
        assert!(out.starts_with("async fn hello"), "{out}");
        assert!(
            out.contains("unknown #[orchestrator] option `versoin`"),
            "{out}"
        );
    }
}
