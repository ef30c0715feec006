//! Counter: the durable entity `counter` with operations `add(i64)`, `reset` and `get`.
//! `POST /api/counters/{key}/add` with a number signals it; `GET /api/counters/{key}`
//! reads it. The management API's entity routes work too
//! (`/runtime/webhooks/durabletask/entities/counter/{key}`).

use durable_core::entity;
use durable_http::{http_start, DurableClient, HttpError, HttpRequest, HttpResponse, HttpResult};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The counter's state.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct Counter {
    /// The current value.
    pub value: i64,
}

#[entity(name = "counter")]
impl Counter {
    /// Adds `n`; answers the new value, or refuses a sum past the `i64` range.
    pub fn add(&mut self, n: i64) -> Result<i64, String> {
        self.value = self.value.checked_add(n).ok_or_else(|| {
            format!(
                "adding {n} to {} would leave the range of a 64-bit counter",
                self.value
            )
        })?;
        Ok(self.value)
    }

    /// Back to zero.
    pub fn reset(&mut self) {
        self.value = 0;
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value
    }
}

/// `POST /api/counters/{key}/add` with a JSON number.
#[http_start(route = "/api/counters/{key}/add", method = "POST")]
pub async fn add_to_counter(client: DurableClient, req: HttpRequest) -> HttpResult {
    let n: i64 = req.json()?;
    let key = req.param("key").unwrap_or_default().to_string();
    client.entity::<Counter>(key).signal().add(n).await?;
    Ok(HttpResponse::empty(StatusCode::ACCEPTED))
}

/// `GET /api/counters/{key}`: the value, or 404.
#[http_start(route = "/api/counters/{key}", method = "GET")]
pub async fn read_counter(client: DurableClient, req: HttpRequest) -> HttpResult {
    let key = req.param("key").unwrap_or_default().to_string();
    match client.entity::<Counter>(key.clone()).read_state().await? {
        Some(c) => Ok(HttpResponse::json(StatusCode::OK, &c)),
        None => Err(HttpError::not_found(format!("no counter '{key}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_refuses_to_overflow() {
        let mut c = Counter { value: i64::MAX };
        assert!(c.add(1).is_err());
        assert_eq!(c.value, i64::MAX);
        let mut c = Counter { value: i64::MIN };
        assert!(c.add(-1).is_err());
        assert_eq!(c.add(5), Ok(i64::MIN + 5));
    }
}
