use durable_core::{orchestrator, OrchestrationContext, OrchestrationError};
// Stand-ins with the real crates' paths, so the fixture needs no extra dependencies:
// the check is syntactic and sees only the paths.
#[allow(dead_code)]
mod chrono {
    pub struct Utc;
    impl Utc {
        pub fn now() -> u64 { 0 }
    }
    pub struct Local;
    impl Local {
        pub fn now() -> u64 { 0 }
    }
}
#[allow(dead_code)]
mod time {
    pub struct OffsetDateTime;
    impl OffsetDateTime {
        pub fn now_utc() -> u64 { 0 }
    }
}
#[allow(dead_code)]
mod rand {
    pub fn random<T: Default>() -> T { T::default() }
    pub fn thread_rng() -> u64 { 0 }
    pub fn rng() -> u64 { 0 }
}
#[allow(dead_code)]
mod uuid {
    pub struct Uuid;
    impl Uuid {
        pub fn new_v4() -> u128 { 0 }
    }
}
#[allow(dead_code)]
mod reqwest {
    pub async fn get(_url: &str) -> Result<String, ()> { Ok(String::new()) }
}

#[orchestrator]
async fn o(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _ = ctx;
    let _: u64 = rand::random();
    let _ = rand::thread_rng();
    let _ = rand::rng();
    let _ = uuid::Uuid::new_v4();
    Ok(())
}
fn main() {}
