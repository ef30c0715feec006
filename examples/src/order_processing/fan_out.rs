//! Fan-out/fan-in: `POST /api/fan-out` with a list of task names starts `fan_out_fan_in`,
//! which schedules one `ProcessTask` activity per name at once, waits for all of them and
//! returns their results in the order of the input: `["Task1 completed", ...]`.

use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError,
};
use durable_http::{http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResult};

/// Most tasks one request may fan out to.
pub const MAX_TASKS: usize = 1000;
/// Longest task name, in characters.
pub const MAX_TASK_CHARS: usize = 200;

/// `ProcessTask`: one unit of the parallel work.
#[activity(name = "ProcessTask")]
pub async fn process_task(task: String) -> Result<String, ActivityError> {
    Ok(format!("{task} completed"))
}

/// Fans out one `ProcessTask` per name and fans the results back in.
#[orchestrator]
pub async fn fan_out_fan_in(
    ctx: OrchestrationContext,
    tasks: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    ctx.set_custom_status(format!("processing {} tasks", tasks.len()));
    let parallel: Vec<_> = tasks
        .into_iter()
        .map(|t| ctx.call_activity(process_task, t))
        .collect();
    let mut outputs = Vec::new();
    for result in ctx.when_all(parallel).await {
        outputs.push(result?);
    }
    Ok(outputs)
}

/// `POST /api/fan-out` with `["Task1","Task2","Task3"]`: 202 with the status URL.
#[http_start(route = "/api/fan-out", method = "POST")]
pub async fn start_fan_out(client: DurableClient, req: HttpRequest) -> HttpResult {
    let tasks: Vec<String> = req.json()?;
    if tasks.is_empty() || tasks.len() > MAX_TASKS {
        return Err(HttpError::bad_request(format!(
            "give 1 to {MAX_TASKS} task names, got {}",
            tasks.len()
        )));
    }
    if let Some(i) = tasks.iter().position(|t| t.trim().is_empty()) {
        return Err(HttpError::bad_request(format!("task name {i} is empty")));
    }
    if let Some(i) = tasks
        .iter()
        .position(|t| t.chars().count() > MAX_TASK_CHARS)
    {
        return Err(HttpError::bad_request(format!(
            "task name {i} is longer than {MAX_TASK_CHARS} characters"
        )));
    }
    let id = client.start(fan_out_fan_in, tasks).await?;
    Ok(client.check_status_response(&req, &id))
}
