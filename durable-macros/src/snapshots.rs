//! Expansion snapshots: the code each attribute generates for a happy-path input,
//! pretty-printed and compared with the files under `durable-macros/tests/snapshots/`.
//! A change to generated code shows up as a diff in review.
//!
//! After an intended change, regenerate with
//! `DURABLE_SNAPSHOTS=overwrite cargo test -p durable-macros snapshots`
//! and read the diff of `tests/snapshots/` before committing it.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

use crate::kind::Kind;
use crate::pipeline;

fn check(name: &str, kind: Kind, attr: TokenStream, item: TokenStream) {
    let out = pipeline::run(kind, attr, item);
    let file: syn::File = match syn::parse2(out.clone()) {
        Ok(f) => f,
        Err(e) => panic!("the {kind} expansion of {name} is not a valid file: {e}\n{out}"),
    };
    let actual = prettyplease::unparse(&file);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(format!("{name}.expanded.rs"));
    let overwrite = std::env::var("DURABLE_SNAPSHOTS").is_ok_and(|v| v == "overwrite");
    let expected = std::fs::read_to_string(&path).ok();
    if overwrite || expected.is_none() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        if !overwrite {
            panic!(
                "wrote a new snapshot {}; review it and run again",
                path.display()
            );
        }
        return;
    }
    let expected = expected.unwrap_or_default();
    if expected != actual {
        panic!(
            "the {kind} expansion of `{name}` changed (- snapshot, + now):\n{}\nIf the change is intended, run `DURABLE_SNAPSHOTS=overwrite cargo test -p durable-macros snapshots` and review the diff of {}",
            line_diff(&expected, &actual),
            path.display()
        );
    }
}

/// A line diff (longest common subsequence), unchanged lines shown only near changes.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut rows: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            rows.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            rows.push(('+', b[j]));
            j += 1;
        } else {
            rows.push(('-', a[i]));
            i += 1;
        }
    }
    let near = |k: usize| {
        rows[k.saturating_sub(2)..(k + 3).min(rows.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (c, line)) in rows.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("   ...\n");
                skipped = false;
            }
            out.push_str(&format!(" {c} {line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

#[test]
fn activity() {
    check(
        "activity",
        Kind::Activity,
        quote!(name = "add_numbers", timeout = "30s"),
        quote! {
            /// Adds three numbers.
            pub async fn add(ctx: ActivityContext, a: i64, b: i64, c: i64) -> Result<i64, ActivityError> {
                let _ = ctx.attempt();
                Ok(a + b + c)
            }
        },
    );
}

#[test]
fn activity_plain_return() {
    check(
        "activity_plain_return",
        Kind::Activity,
        quote!(),
        quote! {
            async fn say_hello(city: String) -> String {
                format!("Hello {city}!")
            }
        },
    );
}

#[test]
fn orchestrator() {
    check(
        "orchestrator",
        Kind::Orchestrator,
        quote!(name = "greeter", version = "2"),
        quote! {
            pub async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
                let mut out = Vec::new();
                for city in cities {
                    out.push(ctx.call_activity(say_hello, city).await?);
                }
                Ok(out)
            }
        },
    );
}

#[test]
fn orchestrator_with_escape_hatch_and_warning() {
    check(
        "orchestrator_escape_hatch",
        Kind::Orchestrator,
        quote!(),
        quote! {
            async fn monitor(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
                #[nondeterministic]
                let started = std::time::Instant::now();
                loop {
                    ctx.create_timer(std::time::Duration::from_secs(60)).await;
                }
            }
        },
    );
}

#[test]
fn entity_impl() {
    check(
        "entity_impl",
        Kind::Entity,
        quote!(),
        quote! {
            impl Counter {
                pub fn add(&mut self, n: i64) -> i64 {
                    self.value += n;
                    self.value
                }
                pub async fn reset(&mut self, ctx: &EntityContext<Self>) -> Result<(), String> {
                    let _ = ctx.key();
                    self.value = 0;
                    Ok(())
                }
                pub fn get(&self) -> i64 {
                    self.value
                }
                fn helper(&self) -> bool {
                    self.value == 0
                }
            }
        },
    );
}

#[test]
fn entity_fn() {
    check(
        "entity_fn",
        Kind::Entity,
        quote!(name = "Audit"),
        quote! {
            async fn audit(ctx: EntityContext<u64>, op: Operation) -> Result<u64, FailureDetails> {
                let n = ctx.get_state_or_default()? + 1;
                ctx.set_state(&n);
                Ok(n)
            }
        },
    );
}

#[test]
fn http_start() {
    check(
        "http_start",
        Kind::HttpStart,
        quote!(route = "/api/hello/{city}", methods = "GET, post"),
        quote! {
            async fn start_hello(client: DurableClient, req: HttpRequest) -> HttpResult {
                let id = client.start(hello_cities, vec![req.param("city").unwrap_or_default()]).await?;
                Ok(client.check_status_response(&req, &id))
            }
        },
    );
}

#[test]
fn error_fallback_keeps_the_item() {
    check(
        "error_fallback",
        Kind::Activity,
        quote!(nme = "x"),
        quote! {
            fn greet(name: &str) -> String {
                name.to_string()
            }
        },
    );
}
