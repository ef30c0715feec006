//! Order processing: function chaining with branches. `POST /api/orders` with an order
//! starts `process_order`, which validates the order, checks the inventory, takes the
//! payment and sends the confirmation email, each an activity, stopping at the first step
//! that says no. The custom status names the current step; the output says how it ended.
//!
//! The shop is a demo: three products (`widget` with plenty of stock, `gadget` with 3,
//! `gizmo` sold out), card numbers checked with the Luhn sum, and `4000000000000002`
//! declined like a payment provider's test card.

use durable_core::{
    activity, orchestrator, ActivityContext, ActivityError, OrchestrationContext,
    OrchestrationError,
};
use durable_http::{http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResult};
use serde::{Deserialize, Serialize};

use crate::common::{deliver, Email};

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Product code: `widget`, `gadget` or `gizmo`.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// An order as the shop receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The shop's order number.
    pub id: String,
    /// Where the confirmation goes.
    pub email: String,
    /// What was ordered.
    pub items: Vec<Item>,
    /// Card number (digits, spaces allowed).
    pub card: String,
}

/// What one step decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The step said yes.
    pub passed: bool,
    /// Why, in a few words.
    pub note: String,
}

impl Step {
    fn pass(note: impl Into<String>) -> Self {
        Step {
            passed: true,
            note: note.into(),
        }
    }
    fn fail(note: impl Into<String>) -> Self {
        Step {
            passed: false,
            note: note.into(),
        }
    }
}

/// How an order ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderOutcome {
    /// The order number.
    pub order_id: String,
    /// "Order processed successfully!" or "Order processing failed."
    pub message: String,
    /// The step that said no, if one did.
    pub failed_step: Option<String>,
    /// Why it said no, or the payment reference when all went well.
    pub note: String,
}

/// Price in cents and units in stock of a product.
pub fn catalog(sku: &str) -> Option<(u64, u32)> {
    match sku {
        "widget" => Some((250, 1000)),
        "gadget" => Some((1999, 3)),
        "gizmo" => Some((4999, 0)),
        _ => None,
    }
}

/// The order's total in cents (unknown products count zero).
pub fn total_cents(order: &Order) -> u64 {
    order
        .items
        .iter()
        .map(|i| catalog(&i.sku).map_or(0, |(p, _)| p * u64::from(i.quantity)))
        .sum()
}

fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// `ValidateOrder`: an order number, an email address, 1 to 20 lines of known products,
/// 1 to 100 of each.
#[activity(name = "ValidateOrder")]
pub async fn validate_order(order: Order) -> Result<Step, ActivityError> {
    if order.id.trim().is_empty() {
        return Ok(Step::fail("the order has no id"));
    }
    if !order.email.contains('@') {
        return Ok(Step::fail(format!(
            "'{}' is not an email address",
            order.email
        )));
    }
    if order.items.is_empty() || order.items.len() > 20 {
        return Ok(Step::fail("an order has 1 to 20 lines"));
    }
    for item in &order.items {
        if catalog(&item.sku).is_none() {
            return Ok(Step::fail(format!("unknown product '{}'", item.sku)));
        }
        if !(1..=100).contains(&item.quantity) {
            return Ok(Step::fail(format!(
                "quantity of '{}' must be 1 to 100",
                item.sku
            )));
        }
    }
    Ok(Step::pass("valid"))
}

/// `CheckInventory`: every line is in stock.
#[activity(name = "CheckInventory")]
pub async fn check_inventory(order: Order) -> Result<Step, ActivityError> {
    for item in &order.items {
        let (_, stock) = catalog(&item.sku).unwrap_or((0, 0));
        if item.quantity > stock {
            return Ok(Step::fail(format!(
                "only {stock} '{}' in stock, {} ordered",
                item.sku, item.quantity
            )));
        }
    }
    Ok(Step::pass("in stock"))
}

/// `ProcessPayment`: charges the card. The reference is derived from the activity's
/// idempotency key, so a retried charge is recognisable as the same one.
#[activity(name = "ProcessPayment")]
pub async fn process_payment(ctx: ActivityContext, order: Order) -> Result<Step, ActivityError> {
    let digits: String = order.card.chars().filter(|c| !c.is_whitespace()).collect();
    if !(12..=19).contains(&digits.len()) || !luhn_ok(&digits) {
        return Ok(Step::fail("the card number is not valid"));
    }
    if digits == "4000000000000002" {
        return Ok(Step::fail("the card was declined"));
    }
    let total = total_cents(&order);
    let reference: String = ctx.idempotency_key().chars().take(12).collect();
    Ok(Step::pass(format!(
        "charged {}.{:02} (payment {reference})",
        total / 100,
        total % 100
    )))
}

/// `SendConfirmationEmail`: mails the customer.
#[activity(name = "SendConfirmationEmail")]
pub async fn send_confirmation_email(order: Order, payment: String) -> Result<(), ActivityError> {
    let lines: Vec<String> = order
        .items
        .iter()
        .map(|i| format!("{} x {}", i.quantity, i.sku))
        .collect();
    deliver(Email {
        to: order.email.clone(),
        subject: format!("Order {} confirmed", order.id),
        body: format!("Thank you! {}; {payment}.", lines.join(", ")),
        links: Vec::new(),
    });
    Ok(())
}

/// Validates, checks the inventory, charges and confirms, in that order; the first step
/// that says no ends the order.
#[orchestrator]
pub async fn process_order(
    ctx: OrchestrationContext,
    order: Order,
) -> Result<OrderOutcome, OrchestrationError> {
    let failed = |step: &str, note: String| OrderOutcome {
        order_id: order.id.clone(),
        message: "Order processing failed.".into(),
        failed_step: Some(step.into()),
        note,
    };
    ctx.set_custom_status("ValidateOrder");
    let valid = ctx.call_activity(validate_order, order.clone()).await?;
    if !valid.passed {
        ctx.set_custom_status("Failed");
        return Ok(failed("ValidateOrder", valid.note));
    }
    ctx.set_custom_status("CheckInventory");
    let stock = ctx.call_activity(check_inventory, order.clone()).await?;
    if !stock.passed {
        ctx.set_custom_status("Failed");
        return Ok(failed("CheckInventory", stock.note));
    }
    ctx.set_custom_status("ProcessPayment");
    let payment = ctx.call_activity(process_payment, order.clone()).await?;
    if !payment.passed {
        ctx.set_custom_status("Failed");
        return Ok(failed("ProcessPayment", payment.note));
    }
    ctx.set_custom_status("SendConfirmationEmail");
    ctx.call_activity(
        send_confirmation_email,
        (order.clone(), payment.note.clone()),
    )
    .await?;
    ctx.set_custom_status("Completed");
    Ok(OrderOutcome {
        order_id: order.id.clone(),
        message: "Order processed successfully!".into(),
        failed_step: None,
        note: payment.note,
    })
}

/// `POST /api/orders` with an order: 202 with the status URL. A body that is not an order
/// (missing fields, wrong types) is a 400 saying what is wrong; an order the shop cannot
/// fulfil is accepted and ends with "Order processing failed." and the failing step.
#[http_start(route = "/api/orders", method = "POST")]
pub async fn start_order(client: DurableClient, req: HttpRequest) -> HttpResult {
    let order: Order = req.json()?;
    if order.id.len() > 100 || order.items.len() > 1000 {
        return Err(HttpError::bad_request(
            "an order id is at most 100 characters and an order at most 1000 lines",
        ));
    }
    let id = client.start(process_order, order).await?;
    Ok(client.check_status_response(&req, &id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(sku: &str, quantity: u32, card: &str) -> Order {
        Order {
            id: "A-1".into(),
            email: "ada@example.com".into(),
            items: vec![Item {
                sku: sku.into(),
                quantity,
            }],
            card: card.into(),
        }
    }

    #[tokio::test]
    async fn steps_say_no_for_the_right_reasons() {
        assert!(validate_order(order("widget", 2, "")).await.unwrap().passed);
        let bad = validate_order(order("teapot", 1, "")).await.unwrap();
        assert_eq!(bad, Step::fail("unknown product 'teapot'"));
        assert!(!validate_order(order("widget", 0, "")).await.unwrap().passed);
        let out = check_inventory(order("gizmo", 1, "")).await.unwrap();
        assert_eq!(out.note, "only 0 'gizmo' in stock, 1 ordered");
        let ctx = ActivityContext::for_test("ProcessPayment");
        let paid = process_payment(ctx.clone(), order("widget", 2, "4242 4242 4242 4242"))
            .await
            .unwrap();
        assert!(
            paid.passed && paid.note.starts_with("charged 5.00"),
            "{paid:?}"
        );
        let declined = process_payment(ctx.clone(), order("widget", 1, "4000000000000002"))
            .await
            .unwrap();
        assert_eq!(declined.note, "the card was declined");
        let invalid = process_payment(ctx, order("widget", 1, "1234567812345678"))
            .await
            .unwrap();
        assert_eq!(invalid.note, "the card number is not valid");
    }
}
