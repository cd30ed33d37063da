//! What Redis' answer to an admission means for the caller. Pure: the audit record of a
//! refusal is named here and written by `record.rs`.

use serde_json::Value;

use super::{Admitted, NewTrigger, Refusal};
use crate::audit::EventKind;
use crate::auth::AuthError;
use crate::domain::WorkflowName;
use crate::http::error::{ApiError, RateLimitHeaders};
use crate::queue::{Admission, Enqueued, Limit, QueuedRequest, Quota};

/// Seconds a caller retrying a still-held request is told to wait: a held request is
/// released or withdrawn within `audit.write_timeout_ms` (default 2 s).
const PENDING_RETRY_SECONDS: u64 = 1;
/// Seconds a caller is told to wait when the backlog is full.
const BACKLOG_RETRY_SECONDS: u64 = 5;

/// The caller's answer to `enqueued`, Redis' answer to admitting `request` to `workflow`
/// under `checks`.
pub fn decide(
    workflow: WorkflowName,
    request: QueuedRequest,
    checks: Admission,
    stored_input: Option<Value>,
    enqueued: Enqueued,
) -> Result<Admitted, Refusal> {
    match enqueued {
        Enqueued::Queued { placement, quotas } => Ok(Admitted::New(Box::new(NewTrigger {
            quota: quota_headers(&checks.limits, &quotas),
            workflow,
            request,
            checks,
            placement,
            stored_input,
        }))),
        Enqueued::Duplicate { request_id } => Ok(Admitted::Duplicate {
            workflow,
            request_id,
        }),
        // Not audited, as a duplicate is not: the request's own records tell its story.
        Enqueued::Pending { request_id } => Err(Refusal::not_audited(ApiError::RequestPending {
            request_id,
            retry_after_seconds: PENDING_RETRY_SECONDS,
        })),
        Enqueued::KeyReused => Err(Refusal::not_audited(ApiError::IdempotencyKeyReused)),
        Enqueued::Replayed => Err(Refusal::audited(
            EventKind::AuthFailed,
            &workflow,
            AuthError::Replayed.to_string(),
            ApiError::InvalidToken(AuthError::Replayed),
        )),
        Enqueued::Backlogged => {
            let backlog = checks.max_backlog.unwrap_or_default();
            let detail = format!("the backlog of {backlog} entries is full");
            let error = ApiError::Unavailable {
                what: "the workflow's queue",
                detail: detail.clone(),
                retry_after_seconds: BACKLOG_RETRY_SECONDS,
            };
            Err(Refusal::audited(
                EventKind::RateLimited,
                &workflow,
                detail,
                error,
            ))
        }
        Enqueued::Limited { index, retry_after } => {
            let Some(limit) = checks.limits.get(index) else {
                return Err(Refusal::not_audited(ApiError::Internal(
                    "the admission script named an unknown limit".into(),
                )));
            };
            let retry_after_seconds = retry_after.as_millis().div_ceil(1_000).max(1) as u64;
            let headers = RateLimitHeaders {
                policy: policy_header(&checks.limits),
                current: format!("\"{}\";r=0;t={retry_after_seconds}", limit.name),
            };
            let error = ApiError::RateLimited {
                policy: limit.name,
                retry_after_seconds,
                headers,
            };
            let reason = format!("rate limit {} exhausted", limit.name);
            Err(Refusal::audited(
                EventKind::RateLimited,
                &workflow,
                reason,
                error,
            ))
        }
    }
}

fn policy_header(limits: &[Limit]) -> String {
    let policies: Vec<String> = limits
        .iter()
        .map(|l| format!("\"{}\";q={};w={}", l.name, l.requests, l.period.as_secs()))
        .collect();
    policies.join(", ")
}

/// The headers of the limit with the fewest requests left.
fn quota_headers(limits: &[Limit], quotas: &[Quota]) -> RateLimitHeaders {
    let tightest = limits
        .iter()
        .zip(quotas)
        .min_by_key(|(_, quota)| quota.remaining);
    RateLimitHeaders {
        policy: policy_header(limits),
        current: tightest.map_or_else(String::new, |(limit, quota)| {
            format!(
                "\"{}\";r={};t={}",
                limit.name,
                quota.remaining,
                quota.reset.as_millis().div_ceil(1_000)
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::RequestId;
    use crate::queue::{LimitScope, Placement};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn workflow() -> Result<WorkflowName, crate::domain::WorkflowNameError> {
        WorkflowName::parse("orders")
    }

    fn request() -> Result<QueuedRequest, Box<dyn std::error::Error>> {
        Ok(QueuedRequest {
            request_id: RequestId::generate(workflow()?),
            input: "{}".into(),
            owner: crate::domain::Owner::parse("iss sub"),
            client_id: None,
            accepted_at: String::new(),
            http_request_id: None,
            trace_header: None,
            traceparent: None,
        })
    }

    fn checks() -> Admission {
        let limit = |name, scope| Limit {
            name,
            scope,
            requests: 10,
            period: Duration::from_secs(60),
        };
        Admission {
            limits: vec![
                limit("workflow", LimitScope::Workflow),
                limit("caller-total", LimitScope::CallerTotal("d".into())),
            ],
            max_backlog: Some(7),
            ..Admission::default()
        }
    }

    fn refusal(enqueued: Enqueued) -> Result<Refusal, Box<dyn std::error::Error>> {
        match decide(workflow()?, request()?, checks(), None, enqueued) {
            Err(refusal) => Ok(refusal),
            Ok(_) => Err("admitted".into()),
        }
    }

    #[test]
    fn an_exhausted_limit_is_named_answered_429_and_audited_rate_limited() -> TestResult {
        let limited = Enqueued::Limited {
            index: 1,
            retry_after: Duration::from_millis(1_500),
        };
        let refused = refusal(limited)?;
        assert!(matches!(
            refused.error,
            ApiError::RateLimited {
                policy: "caller-total",
                retry_after_seconds: 2,
                ..
            }
        ));
        let record = refused.record.ok_or("not audited")?;
        assert_eq!(record.kind, EventKind::RateLimited);
        assert_eq!(record.reason, "rate limit caller-total exhausted");
        Ok(())
    }

    #[test]
    fn each_refusal_says_whether_and_as_what_it_is_audited() -> TestResult {
        let kind = |refusal: Refusal| refusal.record.map(|r| r.kind);
        assert_eq!(kind(refusal(Enqueued::KeyReused)?), None);
        assert_eq!(
            kind(refusal(Enqueued::Replayed)?),
            Some(EventKind::AuthFailed)
        );
        let backlogged = refusal(Enqueued::Backlogged)?;
        assert!(matches!(
            backlogged.error,
            ApiError::Unavailable {
                retry_after_seconds: BACKLOG_RETRY_SECONDS,
                ..
            }
        ));
        assert_eq!(kind(backlogged), Some(EventKind::RateLimited));
        // A limit the checks never had is a bug, not a decision about the caller.
        let unknown = refusal(Enqueued::Limited {
            index: 5,
            retry_after: Duration::ZERO,
        })?;
        assert!(matches!(unknown.error, ApiError::Internal(_)));
        assert_eq!(kind(unknown), None);
        Ok(())
    }

    #[test]
    fn an_admitted_trigger_keeps_its_placement_and_quota() -> TestResult {
        let queued = Enqueued::Queued {
            placement: Placement::Deferred,
            quotas: vec![Quota {
                remaining: 3,
                reset: Duration::from_secs(9),
            }],
        };
        let Ok(Admitted::New(trigger)) = decide(workflow()?, request()?, checks(), None, queued)
        else {
            return Err("not admitted".into());
        };
        assert_eq!(trigger.placement, Placement::Deferred);
        assert_eq!(trigger.quota.current, "\"workflow\";r=3;t=9");
        Ok(())
    }
}
