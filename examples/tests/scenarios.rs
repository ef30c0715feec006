//! Each example driven over real HTTP from start to its final status.

use std::time::Duration;

use durable_core::testing::VirtualTime;
use durable_examples::query_job;
use durable_http::RunningHost;
use serde_json::{json, Value};

mod support;
use support::{call, host, host_in, path_of};

const DAY: Duration = Duration::from_secs(86_400);
const MINUTE: Duration = Duration::from_secs(60);

/// Polls a status URL the way a client would: follow Location while 202.
async fn poll(h: &RunningHost, location: &str) -> Value {
    let path = path_of(h, location);
    for _ in 0..100 {
        let (status, _, body) = call(h, "GET", &format!("{path}?wait=5s"), "").await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 202);
    }
    panic!("{location} never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_cities() {
    let h = host().await;
    let (status, headers, body) =
        call(&h, "POST", "/api/hello", r#"["Tokyo","Seattle","London"]"#).await;
    assert_eq!(status, 202);
    assert_eq!(
        headers["location"].to_str().unwrap(),
        body["statusQueryGetUri"]
    );
    let done = poll(&h, headers["location"].to_str().unwrap()).await;
    assert_eq!(done["runtimeStatus"], "Completed");
    assert_eq!(
        done["output"],
        json!(["Hello Tokyo!", "Hello Seattle!", "Hello London!"])
    );
    let (status, _, body) = call(&h, "POST", "/api/hello", r#"{"not":"a list"}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("expected a sequence"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_for_speakers_moves_through_its_stages() {
    // The committee deliberates for three days, in virtual time.
    let time = VirtualTime::new();
    let h = host_in(&time).await;
    let good = json!({"speaker": "Ada", "email": "ada@example.com", "title": "Durable workflows in Rust",
                      "abstract": "How deterministic replay lets long work survive crashes"});
    let (status, headers, _) = call(&h, "POST", "/api/submissions", &good.to_string()).await;
    assert_eq!(status, 202);
    assert!(headers.contains_key("retry-after"));
    let location = headers["location"].to_str().unwrap().to_string();
    let path = path_of(&h, &location);
    // While the committee deliberates, the custom status names the stage.
    time.idle().await.unwrap();
    let (status, _, body) = call(&h, "GET", &path, "").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["runtimeStatus"], &body["customStatus"]),
        (&json!("Running"), &json!("WithCommittee"))
    );
    // Two days on, still deliberating; on the third, the decision.
    time.advance(2 * DAY).await.unwrap();
    let (status, _, body) = call(&h, "GET", &path, "").await;
    assert_eq!(
        (status, &body["customStatus"]),
        (202, &json!("WithCommittee"))
    );
    time.advance(DAY).await.unwrap();
    let done = poll(&h, &location).await;
    assert_eq!(done["customStatus"], "Approved");
    assert_eq!(done["output"]["outcome"], "Approved");
    assert_eq!(done["output"]["reviews"].as_array().unwrap().len(), 3);
    let (Some(created), Some(updated)) = (
        done["createdTime"].as_str(),
        done["lastUpdatedTime"].as_str(),
    ) else {
        panic!("{done}")
    };
    let took = chrono::DateTime::parse_from_rfc3339(updated).unwrap()
        - chrono::DateTime::parse_from_rfc3339(created).unwrap();
    assert_eq!(took, chrono::Duration::days(3));

    let weak = json!({"speaker": "Bob", "email": "bob@example.com", "title": "Blockchain", "abstract": "short"});
    let (_, headers, _) = call(&h, "POST", "/api/submissions", &weak.to_string()).await;
    let done = poll(&h, headers["location"].to_str().unwrap()).await;
    assert_eq!(done["output"]["outcome"], "Rejected");
    assert_eq!(done["output"]["reviews"][1]["stage"], "ContentReview");
    let (status, _, _) = call(&h, "POST", "/api/submissions", r#"{"speaker": 3}"#).await;
    assert_eq!(status, 400);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_job_validates_runs_the_query_and_reports() {
    let dir = std::env::temp_dir().join(format!("durable-query-job-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("audit.db");
    let _ = std::fs::remove_file(&db);
    // The activity reads QUERY_JOB_DB; this test binary sets it once, before any job runs.
    std::env::set_var("QUERY_JOB_DB", &db);
    query_job::seed_audit_rows(&db).unwrap();
    let time = VirtualTime::new();
    let h = host_in(&time).await;
    for (q, msg) in [
        ("", "Empty start date."),
        ("?s=10/08/2021", "Empty end date."),
        ("?s=31/02/2021&e=01/03/2021", "Invalid start date format."),
        ("?s=10/08/2021&e=abcd", "Invalid end date format."),
        ("?s=10/08/2021&e=05/08/2021", "Invalid date range."),
    ] {
        let (status, _, body) = call(&h, "GET", &format!("/api/submit/query{q}"), "").await;
        assert_eq!((status, body["error"].as_str()), (400, Some(msg)), "{q}");
    }
    let (status, _, body) =
        call(&h, "GET", "/api/submit/query?s=10/02/2021&e=10/05/2021", "").await;
    assert_eq!(status, 200);
    let uri = body["statusUri"].as_str().unwrap().to_string();
    let path = path_of(&h, &uri);
    assert!(path.starts_with("/api/status/"));
    let expected = query_job::count_certified(
        &db,
        &query_job::Range {
            start: "2021-02-10".into(),
            end: "2021-05-10".into(),
        },
    )
    .unwrap();
    assert!(expected > 0);
    // Thirteen weekly chunks, a minute apart: twelve minutes of virtual time.
    time.idle().await.unwrap();
    let (status, _, body) = call(&h, "GET", &path, "").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "Running");
    assert_eq!(
        body["progress"],
        json!({"chunksDone": 1, "chunks": 13, "percent": 7, "through": "2021-02-16",
               "found": body["progress"]["found"]})
    );
    time.advance(5 * MINUTE).await.unwrap();
    let (_, _, body) = call(&h, "GET", &path, "").await;
    assert_eq!(body["status"], "Running");
    assert_eq!(
        (
            &body["progress"]["chunksDone"],
            &body["progress"]["percent"]
        ),
        (&json!(6), &json!(46))
    );
    assert_eq!(body["progress"]["through"], "2021-03-23");
    let found_so_far = body["progress"]["found"].as_u64().unwrap();
    assert!(found_so_far > 0 && found_so_far < expected as u64, "{body}");
    time.advance(7 * MINUTE - Duration::from_secs(1))
        .await
        .unwrap();
    let (_, _, body) = call(&h, "GET", &path, "").await;
    assert_eq!(
        (&body["status"], &body["progress"]["chunksDone"]),
        (&json!("Running"), &json!(12))
    );
    time.advance(Duration::from_secs(1)).await.unwrap();
    let (_, _, last) = call(&h, "GET", &path, "").await;
    assert_eq!(last["status"], "Completed");
    assert_eq!(last["result"], json!(expected));
    assert_eq!(
        (&last["progress"]["percent"], &last["progress"]["found"]),
        (&json!(100), &json!(expected))
    );
    let (status, _, body) = call(&h, "GET", "/api/status/unknown-job", "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("Job not found"))
    );
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_entity_over_http() {
    let h = host().await;
    for n in [5, 7, -2] {
        let (status, _, _) = call(&h, "POST", "/api/counters/game1/add", &n.to_string()).await;
        assert_eq!(status, 202);
    }
    let mut value = Value::Null;
    for _ in 0..2000 {
        let (status, _, body) = call(&h, "GET", "/api/counters/game1", "").await;
        if status == 200 && body["value"] == json!(10) {
            value = body["value"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(value, json!(10));
    let (status, _, _) = call(&h, "GET", "/api/counters/other", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = call(&h, "POST", "/api/counters/game1/add", "\"five\"").await;
    assert_eq!(status, 400);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_keep_the_total() {
    let h = host().await;
    for a in ["a", "b", "c"] {
        let (status, _, _) = call(&h, "POST", &format!("/api/accounts/{a}/deposit"), "1000").await;
        assert_eq!(status, 202);
    }
    for a in ["a", "b", "c"] {
        for _ in 0..2000 {
            if call(&h, "GET", &format!("/api/accounts/{a}"), "").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut locations = Vec::new();
    for i in 0..30 {
        let (from, to) = [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")][i % 4];
        let body = json!({"from": from, "to": to, "amount": 50 + i}).to_string();
        let (status, headers, _) = call(&h, "POST", "/api/transfers", &body).await;
        assert_eq!(status, 202);
        locations.push(headers["location"].to_str().unwrap().to_string());
    }
    for l in &locations {
        let done = poll(&h, l).await;
        assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    }
    let mut total = 0;
    for a in ["a", "b", "c"] {
        let (_, _, body) = call(&h, "GET", &format!("/api/accounts/{a}"), "").await;
        total += body["balance"].as_i64().unwrap();
    }
    assert_eq!(total, 3000);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_own_app_from_the_readme() {
    // The README's requests, one by one.
    let time = VirtualTime::new();
    let h = host_in(&time).await;
    let (status, headers, _) =
        call(&h, "POST", "/api/expenses", r#"{"who":"ada","cents":4200}"#).await;
    assert_eq!(status, 202);
    let id = headers["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    time.idle().await.unwrap();
    let (status, _, body) = call(&h, "GET", &format!("/api/expenses/{id}/stage"), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"id": id, "stage": "WaitingForManager", "runtimeStatus": "Running"})
    );
    let host = h.addr.to_string();
    let (status, _, body) = support::call_with(
        &h,
        "POST",
        &format!("/runtime/webhooks/durabletask/instances/{id}/raiseEvent/decision"),
        &[
            ("host", host.as_str()),
            ("x-functions-key", support::KEY),
            ("content-type", "application/json"),
        ],
        "true",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    time.idle().await.unwrap();
    let (_, _, body) = call(&h, "GET", &format!("/api/expenses/{id}/stage"), "").await;
    assert_eq!(
        (&body["stage"], &body["runtimeStatus"]),
        (&json!("Approved"), &json!("Completed"))
    );

    // Nobody decides within a week: rejected. A bad body, an unknown id.
    let (_, headers, _) = call(&h, "POST", "/api/expenses", r#"{"who":"bo","cents":1}"#).await;
    let stage = format!(
        "/api/expenses/{}/stage",
        headers["location"]
            .to_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
    );
    time.advance(7 * DAY).await.unwrap();
    let (_, _, body) = call(&h, "GET", &stage, "").await;
    assert_eq!(body["stage"], "Rejected");
    let (status, _, body) = call(&h, "POST", "/api/expenses", r#"{"who":"bo"}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("cents"), "{body}");
    let (status, _, _) = call(&h, "GET", "/api/expenses/no-such-id/stage", "").await;
    assert_eq!(status, 404);
    h.shutdown().await;
}
