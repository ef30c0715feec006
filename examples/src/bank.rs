//! Bank: accounts are entities; a transfer is an orchestration that locks both accounts
//! (a critical section: locks taken in one global order, so transfers never deadlock),
//! checks the balance and moves the money. However many transfers run at once, the total
//! never changes.

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
    /// Adds money.
    pub fn deposit(&mut self, amount: i64) -> Result<i64, String> {
        if amount <= 0 {
            return Err(format!("deposit must be positive, got {amount}"));
        }
        self.balance += amount;
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

/// Moves money between two accounts inside a critical section; answers whether it moved.
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
    ctx.entity::<Account>(t.from.clone())
        .withdraw(t.amount)
        .await?;
    ctx.entity::<Account>(t.to.clone())
        .deposit(t.amount)
        .await?;
    Ok(true)
}

/// `POST /api/transfers` with `{"from","to","amount"}`.
#[http_start(route = "/api/transfers", method = "POST")]
pub async fn start_transfer(client: DurableClient, req: HttpRequest) -> HttpResult {
    let t: Transfer = req.json()?;
    let id = client.start(transfer, t).await?;
    Ok(client.check_status_response(&req, &id))
}

/// `POST /api/accounts/{key}/deposit` with a JSON amount.
#[http_start(route = "/api/accounts/{key}/deposit", method = "POST")]
pub async fn deposit(client: DurableClient, req: HttpRequest) -> HttpResult {
    let amount: i64 = req.json()?;
    if amount <= 0 {
        return Err(HttpError::bad_request("amount must be positive"));
    }
    let key = req.param("key").unwrap_or_default().to_string();
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
