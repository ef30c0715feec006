//! Determinism checks for `#[orchestrator]` bodies: calls whose result differs between
//! replays (wall-clock time, sleeping, randomness, spawning, I/O, environment) are errors
//! that name the replay-safe replacement; `tokio::select!` without `biased;` is an error;
//! an unbounded loop that awaits without `continue_as_new` is a warning.
//!
//! The check is syntactic: it sees the orchestrator's own body, matched by path suffix
//! (`tokio::time::sleep`, `time::sleep`, `Instant::now`, ...), including `use` items in
//! the body and the arguments of expression-list macros (`println!`, `join!`). It cannot
//! see into helper functions the body calls, names imported or aliased outside the body
//! (`use tokio::time::sleep as nap` at module level, then `nap(..)`), methods on values,
//! or macros whose arguments are not expressions. A statement marked
//! `#[nondeterministic]` is exempt (the attribute is removed before compiling).

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::quote_spanned;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{Block, Expr, Macro, Path, Stmt, Token};

/// What to use instead.
const TIME: &str = "use `ctx.current_utc_datetime()`, which is the same on every replay";
const SLEEP: &str = "use `ctx.create_timer(duration).await`, a durable timer";
const RANDOM: &str = "use `ctx.new_guid()` (deterministic), or draw random values in an activity";
const SPAWN: &str =
    "spawned tasks are not replayed; run the work in an activity, or fan out with `ctx.when_all`";
const IO: &str = "do I/O in an activity (or with `ctx.call_http`); orchestrators must only compute";
const ENV: &str = "read configuration in an activity, or pass it in the orchestration input";

/// (path suffix, what it is, replacement)
const RULES: &[(&[&str], &str, &str)] = &[
    (&["SystemTime", "now"], "reads the wall clock", TIME),
    (&["Instant", "now"], "reads the wall clock", TIME),
    (&["Utc", "now"], "reads the wall clock", TIME),
    (&["Local", "now"], "reads the wall clock", TIME),
    (&["OffsetDateTime", "now_utc"], "reads the wall clock", TIME),
    (
        &["OffsetDateTime", "now_local"],
        "reads the wall clock",
        TIME,
    ),
    (&["time", "sleep"], "sleeps on the wall clock", SLEEP),
    (&["time", "sleep_until"], "sleeps on the wall clock", SLEEP),
    (&["time", "interval"], "ticks on the wall clock", SLEEP),
    (&["time", "timeout"], "times out on the wall clock", SLEEP),
    (&["thread", "sleep"], "blocks the thread", SLEEP),
    (&["rand", "random"], "is random", RANDOM),
    (&["rand", "thread_rng"], "is random", RANDOM),
    (&["rand", "rng"], "is random", RANDOM),
    (&["Uuid", "new_v4"], "is random", RANDOM),
    (&["Uuid", "now_v7"], "reads the clock", RANDOM),
    (&["tokio", "spawn"], "spawns a task", SPAWN),
    (&["task", "spawn"], "spawns a task", SPAWN),
    (&["thread", "spawn"], "spawns a thread", SPAWN),
    (&["spawn_blocking"], "spawns a blocking task", SPAWN),
    (&["env", "var"], "reads the environment", ENV),
    (&["env", "var_os"], "reads the environment", ENV),
    (&["env", "vars"], "reads the environment", ENV),
];

/// Path prefixes that are I/O wherever they appear.
const IO_PREFIXES: &[&[&str]] = &[
    &["std", "fs"],
    &["tokio", "fs"],
    &["std", "net"],
    &["tokio", "net"],
    &["std", "process"],
    &["tokio", "process"],
    &["reqwest"],
];

/// The attribute that exempts one statement.
pub const ESCAPE: &str = "nondeterministic";

struct Checker {
    errors: Vec<syn::Error>,
    warnings: Vec<(Span, String)>,
    exempt: usize,
}

fn segments(path: &Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

fn ends_with(segs: &[String], suffix: &[&str]) -> bool {
    segs.len() >= suffix.len()
        && segs[segs.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a == b)
}

fn starts_with(segs: &[String], prefix: &[&str]) -> bool {
    segs.len() >= prefix.len() && segs.iter().zip(prefix).all(|(a, b)| a == b)
}

/// The error message for a path that is not replay-safe, if it is one.
fn verdict(segs: &[String]) -> Option<String> {
    let shown = segs.join("::");
    for (suffix, what, instead) in RULES {
        if ends_with(segs, suffix) {
            return Some(format!(
                "`{shown}` {what}, which differs between replays of an orchestrator; {instead} (or mark the statement #[{ESCAPE}] if this is deliberate)"
            ));
        }
    }
    for prefix in IO_PREFIXES {
        if starts_with(segs, prefix) {
            return Some(format!(
                "`{shown}` does I/O inside an orchestrator; {IO} (or mark the statement #[{ESCAPE}] if this is deliberate)"
            ));
        }
    }
    None
}

/// The full paths a `use` tree imports (`use std::{fs, time::Instant}` -> `std::fs`,
/// `std::time::Instant`).
fn use_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut v = prefix.clone();
            if n.ident != "self" {
                v.push(n.ident.to_string());
            }
            out.push(v);
        }
        syn::UseTree::Rename(r) => {
            let mut v = prefix.clone();
            if r.ident != "self" {
                v.push(r.ident.to_string());
            }
            out.push(v);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix, out);
            }
        }
    }
}

impl Checker {
    fn check_path(&mut self, path: &Path) {
        if self.exempt > 0 {
            return;
        }
        if let Some(msg) = verdict(&segments(path)) {
            self.errors.push(syn::Error::new_spanned(path, msg));
        }
    }

    /// `use` items inside the body: importing a forbidden function (or an I/O module)
    /// is reported at the import, since later bare calls cannot be recognized.
    fn check_use(&mut self, item: &syn::ItemUse) {
        if self.exempt > 0 {
            return;
        }
        let mut leaves = Vec::new();
        use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
        for segs in leaves {
            if let Some(msg) = verdict(&segs) {
                self.errors.push(syn::Error::new_spanned(&item.tree, msg));
            }
        }
    }

    fn check_select(&mut self, mac: &Macro) {
        if self.exempt > 0 {
            return;
        }
        let segs = segments(&mac.path);
        let biased = matches!(
            mac.tokens.clone().into_iter().next(),
            Some(TokenTree::Ident(i)) if i == "biased"
        );
        if !biased {
            self.errors.push(syn::Error::new_spanned(
                &mac.path,
                format!(
                    "`{}!` picks a random ready branch, so replay may take another one; use `ctx.when_any(..)` or `durable_core::race(a, b)`, which pick in history order (or start the macro with `biased;`)",
                    segs.join("::")
                ),
            ));
        }
    }
}

fn is_select(mac: &Macro) -> bool {
    mac.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "select")
}

fn has_escape(attrs: &mut Vec<syn::Attribute>) -> bool {
    let before = attrs.len();
    attrs.retain(|a| !a.path().is_ident(ESCAPE));
    attrs.len() != before
}

fn stmt_attrs(stmt: &mut Stmt) -> Option<&mut Vec<syn::Attribute>> {
    match stmt {
        Stmt::Local(l) => Some(&mut l.attrs),
        Stmt::Macro(m) => Some(&mut m.attrs),
        Stmt::Expr(e, _) => expr_attrs(e),
        Stmt::Item(_) => None,
    }
}

fn expr_attrs(e: &mut Expr) -> Option<&mut Vec<syn::Attribute>> {
    match e {
        Expr::Call(x) => Some(&mut x.attrs),
        Expr::MethodCall(x) => Some(&mut x.attrs),
        Expr::Await(x) => Some(&mut x.attrs),
        Expr::Assign(x) => Some(&mut x.attrs),
        Expr::Macro(x) => Some(&mut x.attrs),
        Expr::Block(x) => Some(&mut x.attrs),
        Expr::If(x) => Some(&mut x.attrs),
        Expr::Loop(x) => Some(&mut x.attrs),
        Expr::While(x) => Some(&mut x.attrs),
        Expr::ForLoop(x) => Some(&mut x.attrs),
        Expr::Match(x) => Some(&mut x.attrs),
        Expr::Path(x) => Some(&mut x.attrs),
        _ => None,
    }
}

/// Does this block await something and never continue as new?
fn unbounded_await_loop(body: &Block) -> bool {
    #[derive(Default)]
    struct Scan {
        awaits: bool,
        continues: bool,
    }
    impl<'ast> syn::visit::Visit<'ast> for Scan {
        fn visit_expr_await(&mut self, e: &'ast syn::ExprAwait) {
            self.awaits = true;
            syn::visit::visit_expr_await(self, e);
        }
        fn visit_ident(&mut self, i: &'ast proc_macro2::Ident) {
            if i == "continue_as_new" || i == "continue_as_new_with" {
                self.continues = true;
            }
        }
    }
    let mut scan = Scan::default();
    syn::visit::Visit::visit_block(&mut scan, body);
    scan.awaits && !scan.continues
}

impl VisitMut for Checker {
    fn visit_stmt_mut(&mut self, stmt: &mut Stmt) {
        let exempt = stmt_attrs(stmt).map(has_escape).unwrap_or(false);
        if exempt {
            self.exempt += 1;
        }
        visit_mut::visit_stmt_mut(self, stmt);
        if exempt {
            self.exempt -= 1;
        }
    }

    fn visit_path_mut(&mut self, path: &mut Path) {
        self.check_path(path);
        visit_mut::visit_path_mut(self, path);
    }

    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        if is_select(mac) {
            self.check_select(mac);
        } else if let Ok(args) =
            mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)
        {
            // Expression-list macros (`println!`, `assert!`, `join!`, `vec![a, b]`) are
            // checked like code; others are opaque to a syntactic check. The parsed copy
            // is only read: the macro's tokens are emitted as written.
            for mut e in args {
                self.visit_expr_mut(&mut e);
            }
        }
        visit_mut::visit_macro_mut(self, mac);
    }

    fn visit_item_use_mut(&mut self, item: &mut syn::ItemUse) {
        self.check_use(item);
        visit_mut::visit_item_use_mut(self, item);
    }

    fn visit_expr_mut(&mut self, e: &mut Expr) {
        if self.exempt == 0 {
            let unbounded = match e {
                Expr::Loop(l) => unbounded_await_loop(&l.body).then(|| l.loop_token.span()),
                Expr::While(w) => match &*w.cond {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    }) if b.value => unbounded_await_loop(&w.body).then(|| w.while_token.span()),
                    _ => None,
                },
                _ => None,
            };
            if let Some(span) = unbounded {
                self.warnings.push((
                    span,
                    "this loop awaits durable work forever without `ctx.continue_as_new(..)`: the history grows without bound and every replay gets slower; continue as new every so often (or mark the loop #[nondeterministic] to silence this)".to_string(),
                ));
            }
        }
        visit_mut::visit_expr_mut(self, e);
    }
}

/// Checks (and strips escape attributes from) an orchestrator body. Returns the errors
/// and the warning items to emit.
pub fn check(block: &mut Block) -> (Vec<syn::Error>, TokenStream) {
    let mut c = Checker {
        errors: Vec::new(),
        warnings: Vec::new(),
        exempt: 0,
    };
    c.visit_block_mut(block);
    // Stable Rust has no warning API for proc macros: a call to a `#[deprecated]`
    // function spanned at the loop makes rustc print the note there as a warning.
    let mut items = TokenStream::new();
    for (i, (span, msg)) in c.warnings.iter().enumerate() {
        let name = syn::Ident::new(&format!("unbounded_history_{i}"), *span);
        let user = syn::Ident::new(&format!("__durable_warn_{i}"), *span);
        items.extend(quote_spanned! {*span=>
            #[deprecated(note = #msg)]
            #[allow(dead_code)]
            fn #name() {}
            #[allow(dead_code)]
            fn #user() {
                #name();
            }
        });
    }
    let warnings = if c.warnings.is_empty() {
        TokenStream::new()
    } else {
        quote::quote! {
            #[doc(hidden)]
            const _: () = { #items };
        }
    };
    (c.errors, warnings)
}
