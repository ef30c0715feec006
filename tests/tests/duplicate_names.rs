//! Two definitions of one durable name in a binary are a startup error that names both
//! definitions (module path, file and line). This file is its own test binary, so the
//! duplicates below do not affect the other tests' registries.

use std::sync::Arc;

use durable_core::{MemoryStore, Worker};

mod billing {
    use durable_core::{
        activity, entity, orchestrator, EntityContext, FailureDetails, Operation,
        OrchestrationContext, OrchestrationError,
    };

    #[activity(name = "charge")]
    pub async fn charge(cents: u64) -> u64 {
        cents
    }

    #[orchestrator(name = "checkout")]
    pub async fn checkout(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
        let _ = ctx;
        Ok(())
    }

    #[entity(name = "cart")]
    pub async fn cart(ctx: EntityContext<u64>, op: Operation) -> Result<(), FailureDetails> {
        let _ = (ctx, op);
        Ok(())
    }
}

mod shop {
    use durable_core::{
        activity, entity, orchestrator, EntityContext, FailureDetails, Operation,
        OrchestrationContext, OrchestrationError,
    };

    // Same durable names under other Rust names: only the durable name counts.
    #[activity(name = "charge")]
    pub async fn charge_card(cents: u64) -> u64 {
        cents
    }

    #[orchestrator(name = "checkout")]
    pub async fn checkout_v1(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
        let _ = ctx;
        Ok(())
    }

    // Entity names are case-insensitive.
    #[entity(name = "Cart")]
    pub async fn shopping_cart(
        ctx: EntityContext<u64>,
        op: Operation,
    ) -> Result<(), FailureDetails> {
        let _ = (ctx, op);
        Ok(())
    }
}

/// The `file:line` of the first line in this file that contains `needle`.
fn location_of(needle: &str) -> String {
    let line = include_str!("duplicate_names.rs")
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in this file")
        + 1;
    format!("{}:{line}", file!())
}

#[tokio::test]
async fn starting_a_runtime_with_duplicate_names_names_both_definitions() {
    let err = match Worker::builder(Arc::new(MemoryStore::new())).start() {
        Ok(_) => panic!("a runtime started with duplicate durable names"),
        Err(e) => e.to_string(),
    };
    println!("{err}");
    for (what, first, second) in [
        (
            "activity 'charge'",
            (
                "duplicate_names::billing::charge",
                "pub async fn charge(cents",
            ),
            (
                "duplicate_names::shop::charge_card",
                "pub async fn charge_card(",
            ),
        ),
        (
            "orchestrator 'checkout'",
            (
                "duplicate_names::billing::checkout",
                "pub async fn checkout(ctx",
            ),
            (
                "duplicate_names::shop::checkout_v1",
                "pub async fn checkout_v1(",
            ),
        ),
        (
            "entity 'cart'",
            ("duplicate_names::billing::cart", "pub async fn cart("),
            (
                "duplicate_names::shop::shopping_cart",
                "pub async fn shopping_cart(",
            ),
        ),
    ] {
        let clause = err
            .split("; ")
            .find(|c| c.contains(&format!("{what} is defined twice")))
            .unwrap_or_else(|| panic!("no clause for {what} in: {err}"));
        for (path, needle) in [first, second] {
            assert!(
                clause.contains(path),
                "{what}: {path} missing from: {clause}"
            );
            // The registration records the line of the attribute, just above the fn.
            let fn_line = location_of(needle);
            let (file, line) = fn_line.rsplit_once(':').unwrap();
            let attr_line = format!("{file}:{}", line.parse::<u32>().unwrap() - 1);
            assert!(
                clause.contains(&attr_line) || clause.contains(&fn_line),
                "{what}: neither {attr_line} nor {fn_line} in: {clause}"
            );
        }
    }
}
