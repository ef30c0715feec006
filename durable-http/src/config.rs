//! Settings every request handler reads: what the public status endpoint shows and how
//! the status URLs handed out look. Depends on nothing else in the crate.

/// What the public status endpoint shows ([`HostBuilder::public_status`](crate::HostBuilder::public_status),
/// `DURABLE_PUBLIC_STATUS=full|minimal|off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublicStatus {
    /// Also the failure message of a failed instance and the reason given to terminate
    /// one (up to 200 characters). Failure messages can carry file paths or panic text:
    /// choose this only when they are meant for the public.
    Full,
    /// The default: a failed instance shows the fixed reason "the orchestration failed",
    /// a terminated one "terminated"; the details are for the keyed management API.
    #[default]
    Minimal,
    /// No public status route (it answers 404), and start answers carry only the
    /// instance id: no `Location`, no `statusQueryGetUri`.
    Off,
}

impl PublicStatus {
    /// Parses `full`, `minimal` or `off` (any case).
    pub fn parse(s: &str) -> Option<PublicStatus> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(PublicStatus::Full),
            "minimal" => Some(PublicStatus::Minimal),
            "off" => Some(PublicStatus::Off),
            _ => None,
        }
    }
}

/// Per-request settings start endpoints need (status prefix, Retry-After, what the
/// public status shows).
#[derive(Clone, Debug)]
pub(crate) struct RequestConfig {
    pub status_prefix: String,
    pub retry_after: u64,
    /// The `Retry-After` seconds of a 503 for a store failure that may pass.
    pub store_retry_after: u64,
    pub public_status: PublicStatus,
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            status_prefix: "/api/instances".into(),
            retry_after: 1,
            store_retry_after: 2,
            public_status: PublicStatus::default(),
        }
    }
}
