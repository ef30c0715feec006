use durable_core::{entity, EntityContext, FailureDetails, Operation};
#[entity]
async fn visits(ctx: EntityContext<u64>) -> Result<u64, FailureDetails> {
    let _ = ctx;
    let _: Option<Operation> = None;
    Ok(0)
}
fn main() {}
