#![deny(warnings)]
use durable_core::{activity, ActivityContext, ActivityError};

#[derive(Debug)]
pub struct MyError;
impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mine")
    }
}

#[activity]
async fn none() -> Result<(), ActivityError> {
    Ok(())
}

#[activity]
pub async fn one(city: String) -> String {
    city
}

#[activity(name = "three_inputs")]
async fn three(ctx: ActivityContext, a: u8, b: String, c: Vec<i32>) -> Result<usize, MyError> {
    let _ = ctx.attempt();
    Ok(a as usize + b.len() + c.len())
}

#[activity]
async fn unit_return(_x: u32) {}

#[activity(name = "bounded", timeout = "250ms")]
async fn bounded(_x: u32) {}

fn main() {
    let _ = (none, one, three, unit_return);
}
