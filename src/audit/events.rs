//! Typed constructors for the events of a caller's request: each names what its kind needs,
//! so a record never lacks its caller, workflow or reason by accident.

use super::record::{AuditEvent, EventKind, sha256_hex};
use crate::auth::Principal;
use crate::domain::{Owner, WorkflowName};
use crate::queue::QueuedRequest;

impl AuditEvent {
    /// An event about `caller`'s request to `workflow` (if known): the verified identity and
    /// the token's digest, never the token.
    pub fn by_caller(kind: EventKind, caller: &Principal, workflow: Option<&WorkflowName>) -> Self {
        let mut event = AuditEvent::now(kind);
        event.workflow = workflow.map(ToString::to_string);
        event.issuer = Some(caller.issuer.clone());
        event.subject = Some(caller.subject.clone());
        event.client_id.clone_from(&caller.client_id);
        event.token_sha256 = Some(caller.token_sha256.clone());
        event
    }

    /// A refusal of `caller`'s request (`denied`, `auth_failed`, `rate_limited`), and why.
    pub fn refusal(
        kind: EventKind,
        caller: &Principal,
        workflow: Option<&WorkflowName>,
        reason: String,
    ) -> Self {
        let mut event = Self::by_caller(kind, caller, workflow);
        event.reason = Some(reason);
        event
    }

    /// A trigger admitted (`accepted`, or `deferred`): its request id and the digest of its
    /// input, plus the input itself where the workflow keeps it (`stored_input`).
    pub fn admission(
        kind: EventKind,
        caller: &Principal,
        workflow: &WorkflowName,
        request_id: &str,
        input: &str,
        stored_input: Option<serde_json::Value>,
    ) -> Self {
        let mut event = Self::by_caller(kind, caller, Some(workflow));
        event.request_id = Some(request_id.to_owned());
        event.input_sha256 = Some(sha256_hex(input.as_bytes()));
        event.input = stored_input;
        event
    }

    /// An event of the drain about `request` of `workflow` (when its queue entry could be
    /// read): who asked for it, and the HTTP request that did.
    pub fn about_request(
        kind: EventKind,
        workflow: &WorkflowName,
        request: Option<&QueuedRequest>,
    ) -> Self {
        let mut event = AuditEvent::now(kind);
        event.workflow = Some(workflow.to_string());
        if let Some(request) = request {
            event.request_id = Some(request.request_id.to_string());
            event.set_owner(&request.owner);
            event.client_id.clone_from(&request.client_id);
            event.http_request_id.clone_from(&request.http_request_id);
        }
        event
    }

    /// `started`: Step Functions started `execution_arn` for the request.
    pub fn started(
        workflow: &WorkflowName,
        request: Option<&QueuedRequest>,
        execution_arn: String,
    ) -> Self {
        let mut event = Self::about_request(EventKind::Started, workflow, request);
        event.execution_arn = Some(execution_arn);
        event
    }

    /// `dead_lettered`: the request can never start as it is, for `reason`.
    pub fn dead_lettered(
        workflow: &WorkflowName,
        request: Option<&QueuedRequest>,
        reason: String,
    ) -> Self {
        let mut event = Self::about_request(EventKind::DeadLettered, workflow, request);
        event.reason = Some(reason);
        event
    }

    /// `retried`: failed start number `attempt`, for `reason`; another follows.
    pub fn retried(
        workflow: &WorkflowName,
        request: &QueuedRequest,
        attempt: u32,
        reason: String,
    ) -> Self {
        let mut event = Self::about_request(EventKind::Retried, workflow, Some(request));
        event.attempt = Some(attempt);
        event.reason = Some(reason);
        event
    }

    /// The owner's issuer (when it has one) and subject.
    fn set_owner(&mut self, owner: &Owner) {
        self.issuer = (!owner.issuer.is_empty()).then(|| owner.issuer.clone());
        self.subject = Some(owner.subject.clone());
    }
}
