//! Call for speakers: a speaker submits a talk with `POST /api/submissions`; an
//! orchestration chains the review stages (validation, content review, committee
//! decision, notification) and sets its custom status at each stage. The client polls the
//! public status URL it got back (`Location` + `Retry-After`) until the decision is in;
//! it never sees management URLs or keys.

use std::time::Duration;

use durable_core::{
    activity, orchestrator, ActivityError, OrchestrationContext, OrchestrationError,
};
use durable_http::{http_start, ClientExt, DurableClient, HttpError, HttpRequest, HttpResult};
use serde::{Deserialize, Serialize};

/// A call-for-speakers submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submission {
    /// Speaker's name.
    pub speaker: String,
    /// Contact email.
    pub email: String,
    /// Talk title.
    pub title: String,
    /// Talk abstract.
    #[serde(rename = "abstract")]
    pub summary: String,
}

/// The outcome of a review stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Review {
    /// The stage.
    pub stage: String,
    /// Passed or not.
    pub passed: bool,
    /// Why.
    pub note: String,
}

/// The final decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// "Approved" or "Rejected".
    pub outcome: String,
    /// Every review, in order.
    pub reviews: Vec<Review>,
}

/// Checks the submission is complete.
#[activity]
pub async fn validate_submission(s: Submission) -> Result<Review, ActivityError> {
    let missing: Vec<&str> = [
        ("speaker", &s.speaker),
        ("email", &s.email),
        ("title", &s.title),
        ("abstract", &s.summary),
    ]
    .into_iter()
    .filter(|(_, v)| v.trim().is_empty())
    .map(|(k, _)| k)
    .collect();
    Ok(Review {
        stage: "Validation".into(),
        passed: missing.is_empty() && s.email.contains('@'),
        note: if missing.is_empty() {
            "complete".into()
        } else {
            format!("missing: {}", missing.join(", "))
        },
    })
}

/// Reviews the content (a stand-in for a human review: abstracts need some substance).
#[activity]
pub async fn review_content(s: Submission) -> Result<Review, ActivityError> {
    let words = s.summary.split_whitespace().count();
    Ok(Review {
        stage: "ContentReview".into(),
        passed: words >= 5,
        note: format!("abstract has {words} words"),
    })
}

/// The committee decides (deterministically here: talks about durability are in).
#[activity]
pub async fn committee_decision(s: Submission) -> Result<Review, ActivityError> {
    let passed = !s.title.to_lowercase().contains("blockchain");
    Ok(Review {
        stage: "Committee".into(),
        passed,
        note: if passed {
            "selected".into()
        } else {
            "not this year".into()
        },
    })
}

/// Notifies the speaker (writes to the log).
#[activity]
pub async fn notify_speaker(email: String, outcome: String) -> Result<(), ActivityError> {
    eprintln!("notify {email}: your submission was {outcome}");
    Ok(())
}

/// How long the committee deliberates before it decides.
pub const COMMITTEE_DELIBERATION: Duration = Duration::from_secs(3 * 86_400);

/// Chains the stages; custom status shows the current stage.
#[orchestrator]
pub async fn call_for_speakers(
    ctx: OrchestrationContext,
    s: Submission,
) -> Result<Decision, OrchestrationError> {
    let mut reviews = Vec::new();
    for stage in ["Validating", "InContentReview", "WithCommittee"] {
        ctx.set_custom_status(stage);
        let review = match stage {
            "Validating" => ctx.call_activity(validate_submission, s.clone()).await?,
            "InContentReview" => ctx.call_activity(review_content, s.clone()).await?,
            _ => {
                // Committees take their time (they meet after three days): a durable
                // timer, not a sleep; tests run it in virtual time.
                ctx.create_timer(COMMITTEE_DELIBERATION).await;
                ctx.call_activity(committee_decision, s.clone()).await?
            }
        };
        let passed = review.passed;
        reviews.push(review);
        if !passed {
            break;
        }
    }
    let outcome = if reviews.iter().all(|r| r.passed) {
        "Approved"
    } else {
        "Rejected"
    };
    ctx.set_custom_status(outcome);
    ctx.call_activity(notify_speaker, (s.email.clone(), outcome.to_string()))
        .await?;
    Ok(Decision {
        outcome: outcome.into(),
        reviews,
    })
}

/// `POST /api/submissions` with a JSON submission: 202 with the status URL.
#[http_start(route = "/api/submissions", method = "POST")]
pub async fn submit(client: DurableClient, req: HttpRequest) -> HttpResult {
    let s: Submission = req.json()?;
    if s.speaker.trim().is_empty() {
        return Err(HttpError::bad_request("speaker must not be empty"));
    }
    let id = client.start(call_for_speakers, s).await?;
    Ok(client.check_status_response(&req, &id))
}
