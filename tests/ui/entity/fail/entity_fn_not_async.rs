use durable_core::{entity, EntityContext, FailureDetails, Operation};
#[entity]
fn visits(ctx: EntityContext<u64>, op: Operation) -> Result<u64, FailureDetails> {
    let _ = (ctx, op);
    Ok(0)
}
fn main() {}
