pub struct Report;
#[durable_core::activity]
async fn build(n: u8) -> Result<Report, String> {
    let _ = n;
    Ok(Report)
}
fn main() {}
