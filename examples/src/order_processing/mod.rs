//! The patterns walkthrough (seed 004) as one program, `order_processing`:
//!
//! - [`orders`]: function chaining with branches. `POST /api/orders` starts
//!   `process_order`, which calls `ValidateOrder`, `CheckInventory`, `ProcessPayment` and
//!   `SendConfirmationEmail` in turn and stops at the first step that says no.
//! - [`fan_out`]: fan-out/fan-in. `POST /api/fan-out` with `["Task1","Task2"]` runs one
//!   `ProcessTask` activity per name in parallel and answers `["Task1 completed", ...]`.
//! - [`monitor`]: an eternal monitor. `POST /api/monitors` checks a health URL with
//!   `ctx.call_http` on a durable timer, continues as new each cycle, sends an alert when
//!   the service is down, and stops on `POST /api/monitors/{id}/stop`.
//! - [`approval`]: human interaction. `POST /api/approvals` mails an approval request
//!   with approve and reject links and waits for whichever comes first, a decision or a
//!   timeout; the links check the instance is still waiting before raising the event.
//!
//! Every one answers the async HTTP API pattern: `202 Accepted` with the public status
//! URL in `Location`.

pub mod approval;
pub mod fan_out;
pub mod monitor;
pub mod orders;
