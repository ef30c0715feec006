//! Bank: accounts are entities; a transfer is an orchestration that locks both accounts
//! (a critical section: locks taken in one global order, so transfers never deadlock),
//! checks the balance and moves the money. However many transfers run at once, the total
//! never changes. Amounts are checked: a deposit or transfer that would take a balance
//! past `i64::MAX` cents is refused, never wrapped.

use durable_core::{entity, orchestrator, OrchestrationContext, OrchestrationError};
use durable_http::{
    http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// An account's state.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct Account {
    /// The balance in cents.
    pub balance: i64,
}

#[entity(name = "account")]
impl Account {
    /// Adds money; refuses an amount that would overflow the balance.
    pub fn deposit(&mut self, amount: i64) -> Result<i64, String> {
        if amount <= 0 {
            return Err(format!("deposit must be positive, got {amount}"));
        }
        self.balance = self
            .balance
            .checked_add(amount)
            .ok_or_else(|| overflow(self.balance, amount))?;
        Ok(self.balance)
    }

    /// Takes money out, if there is enough.
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        if amount <= 0 || amount > self.balance {
            return Err(format!(
                "cannot withdraw {amount} from a balance of {}",
                self.balance
            ));
        }
        self.balance -= amount;
        Ok(self.balance)
    }

    /// The balance.
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

/// The refusal of an amount a balance cannot hold.
fn overflow(balance: i64, amount: i64) -> String {
    format!(
        "adding {amount} to a balance of {balance} would exceed the largest balance ({})",
        i64::MAX
    )
}

/// A transfer request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transfer {
    /// Source account key.
    pub from: String,
    /// Destination account key.
    pub to: String,
    /// Amount in cents.
    pub amount: i64,
}

/// Moves money between two accounts inside a critical section; answers whether it moved
/// (not when the source has too little or the destination would overflow).
#[orchestrator]
pub async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, OrchestrationError> {
    if t.from == t.to || t.amount <= 0 {
        return Ok(false);
    }
    let from = durable_core::EntityId::new("account", t.from.clone());
    let to = durable_core::EntityId::new("account", t.to.clone());
    let _locks = ctx.lock(&[from, to]).await?;
    let balance = ctx.entity::<Account>(t.from.clone()).balance().await?;
    if balance < t.amount {
        return Ok(false);
    }
    // Checked before the withdrawal, so a refused deposit never strands the money.
    let to_balance = ctx.entity::<Account>(t.to.clone()).balance().await?;
    if to_balance.checked_add(t.amount).is_none() {
        return Ok(false);
    }
    ctx.entity::<Account>(t.from.clone())
        .withdraw(t.amount)
        .await?;
    ctx.entity::<Account>(t.to.clone())
        .deposit(t.amount)
        .await?;
    Ok(true)
}

/// Refuses `amount` for account `key` when its balance now could not take it (400 with a
/// clear message). The entity checks again when the money arrives.
async fn check_room(client: &DurableClient, key: &str, amount: i64) -> Result<(), HttpError> {
    let balance = client
        .entity::<Account>(key.to_string())
        .read_state()
        .await?
        .map_or(0, |a| a.balance);
    match balance.checked_add(amount) {
        Some(_) => Ok(()),
        None => Err(HttpError::bad_request(format!(
            "account '{key}': {}",
            overflow(balance, amount)
        ))),
    }
}

/// `POST /api/transfers` with `{"from","to","amount"}`; 400 for an amount that is not
/// positive or that the destination cannot hold.
#[http_start(route = "/api/transfers", method = "POST")]
pub async fn start_transfer(client: DurableClient, req: HttpRequest) -> HttpResult {
    let t: Transfer = req.json()?;
    if t.amount <= 0 {
        return Err(HttpError::bad_request("amount must be positive"));
    }
    check_room(&client, &t.to, t.amount).await?;
    let id = client.start(transfer, t).await?;
    Ok(client.check_status_response(&req, &id))
}

/// `POST /api/accounts/{key}/deposit` with a JSON amount; 400 for an amount that is not
/// positive or that the balance cannot hold.
#[http_start(route = "/api/accounts/{key}/deposit", method = "POST")]
pub async fn deposit(client: DurableClient, req: HttpRequest) -> HttpResult {
    let amount: i64 = req.json()?;
    if amount <= 0 {
        return Err(HttpError::bad_request("amount must be positive"));
    }
    let key = req.param("key").unwrap_or_default().to_string();
    check_room(&client, &key, amount).await?;
    client
        .entity::<Account>(key)
        .signal()
        .deposit(amount)
        .await?;
    Ok(HttpResponse::empty(StatusCode::ACCEPTED))
}

/// `GET /api/accounts/{key}`: the balance, or 404.
#[http_start(route = "/api/accounts/{key}", method = "GET")]
pub async fn read_account(client: DurableClient, req: HttpRequest) -> HttpResult {
    let key = req.param("key").unwrap_or_default().to_string();
    match client.entity::<Account>(key.clone()).read_state().await? {
        Some(a) => Ok(HttpResponse::json(StatusCode::OK, &a)),
        None => Err(HttpError::not_found(format!("no account '{key}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_refuse_to_overflow() {
        let mut a = Account { balance: i64::MAX };
        let err = a.deposit(1).unwrap_err();
        assert!(err.contains("would exceed the largest balance"), "{err}");
        assert_eq!(a.balance, i64::MAX, "unchanged");
        assert_eq!(a.withdraw(i64::MAX), Ok(0));
        assert!(a.withdraw(1).is_err());
        assert!(a.deposit(-5).is_err());
    }
}
