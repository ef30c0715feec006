#![deny(warnings)]
use durable_core::{entity, EntityContext, EntityId, FailureDetails, Operation};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Inventory {
    items: Vec<String>,
}

#[entity]
impl Inventory {
    pub fn add(&mut self, item: String) -> usize {
        self.items.push(item);
        self.items.len()
    }

    pub async fn restock(&mut self, ctx: &EntityContext<Self>, n: u32) -> Result<u32, String> {
        ctx.signal_entity(&EntityId::new("audit", ctx.key()), "log", &n);
        Ok(n)
    }

    pub fn count(&self) -> usize {
        self.items.len()
    }

    fn helper(&self) -> bool {
        self.items.is_empty()
    }
}

#[entity(name = "audit")]
async fn audit(ctx: EntityContext<u64>, op: Operation) -> Result<u64, FailureDetails> {
    let n = ctx.get_state_or_default()? + 1;
    let _ = op.name;
    ctx.set_state(&n);
    Ok(n)
}

fn main() {
    let i = Inventory::default();
    let _ = i.helper();
    let _ = audit;
}
