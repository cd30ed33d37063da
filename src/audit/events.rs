//! Typed constructors for every event stepgate records: each names what its kind needs, so
//! a record never lacks its caller, workflow or reason by accident. A caller's request and
//! the drain's deliveries first, then operators' and the process's own events.

use super::record::{AuditEvent, EventKind, sha256_hex};
use crate::auth::Principal;
use crate::domain::{Owner, WorkflowName};
use crate::queue::QueuedRequest;
use crate::queue::request::EntryError;

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

    /// `auth_failed` before any caller is known: the token's digest (if one was sent), the
    /// issuer it claims (unverified, a bounded hint), and the client's address.
    pub fn token_refused(
        reason: &str,
        token_sha256: Option<String>,
        claimed_issuer: Option<String>,
        client_addr: Option<std::net::IpAddr>,
    ) -> Self {
        let mut event = AuditEvent::now(EventKind::AuthFailed);
        event.reason = Some(reason.to_owned());
        event.token_sha256 = token_sha256;
        event.issuer = claimed_issuer;
        event.client_addr = client_addr.map(|addr| addr.to_string());
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

    /// `failed`: the request's start may or may not have happened and is not tried again
    /// (an EXPRESS workflow's `at_most_once`), for `reason`.
    pub fn failed(
        workflow: &WorkflowName,
        request: Option<&QueuedRequest>,
        reason: String,
    ) -> Self {
        let mut event = Self::about_request(EventKind::Failed, workflow, request);
        event.reason = Some(reason);
        event
    }

    /// `accepted`, written late by the fail-closed recovery for a trigger (`request_id`)
    /// that a process held and stopped before releasing; when its fields cannot be read,
    /// the reason says what is wrong with them.
    pub fn recovered_accepted(
        workflow: &WorkflowName,
        request_id: &str,
        request: Result<&QueuedRequest, &EntryError>,
    ) -> Self {
        let recovered =
            "recovered: the admitting process stopped before releasing it (audit.fail_closed)";
        let mut event = Self::about_request(EventKind::Accepted, workflow, request.ok());
        event.request_id = Some(request_id.to_owned());
        event.input_sha256 = request.ok().map(|r| sha256_hex(r.input.as_bytes()));
        event.reason = Some(match request {
            Ok(_) => recovered.to_owned(),
            Err(problem) => format!("{recovered}; its fields cannot be read: {problem}"),
        });
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

    /// `denied`: `caller` may not use an operator API (`api`); `requested` is the workflow
    /// asked for, where the route names one (cut to a bounded hint).
    pub fn operator_denied(
        api: OperatorApi,
        caller: &Principal,
        requested: Option<String>,
        reason: &str,
    ) -> Self {
        let mut event = Self::by_caller(EventKind::Denied, caller, None);
        event.requested = requested;
        event.reason = Some(format!("{}: {reason}", api.name()));
        event
    }

    /// A dead letter replayed (`replayed`) or purged (`failed`) by `caller` through the
    /// admin API.
    pub fn dead_letter_by_caller(
        handled: DeadLetterHandled,
        caller: &Principal,
        workflow: &WorkflowName,
        request_id: &str,
    ) -> Self {
        let mut event = Self::by_caller(handled.kind(), caller, Some(workflow));
        event.request_id = Some(request_id.to_owned());
        event.reason = Some(format!(
            "dead letter {} through the admin API",
            handled.verb()
        ));
        event
    }

    /// A dead letter replayed or purged with the stepgate CLI by `operator` (the account
    /// the CLI ran as, see `cli::operator`).
    pub fn dead_letter_by_cli(
        handled: DeadLetterHandled,
        operator: &str,
        workflow: &WorkflowName,
        request_id: &str,
    ) -> Self {
        let mut event = AuditEvent::now(handled.kind());
        event.workflow = Some(workflow.to_string());
        event.request_id = Some(request_id.to_owned());
        event.subject = Some(operator.to_owned());
        event.reason = Some(format!(
            "dead letter {} with the stepgate CLI",
            handled.verb()
        ));
        event
    }

    /// `config_loaded`: the process started with the configuration of digest `sha256`.
    pub fn config_loaded(sha256: Option<String>) -> Self {
        let mut event = AuditEvent::now(EventKind::ConfigLoaded);
        event.config_sha256 = sha256;
        event
    }

    /// `config_reloaded`: the configuration of digest `sha256` took effect.
    pub fn config_reloaded(sha256: String) -> Self {
        let mut event = AuditEvent::now(EventKind::ConfigReloaded);
        event.config_sha256 = Some(sha256);
        event
    }

    /// `config_refused`: a changed configuration (digest `sha256`, when it could be read)
    /// did not take effect, for `reason`; the running one stays.
    pub fn config_refused(sha256: Option<String>, reason: String) -> Self {
        let mut event = AuditEvent::now(EventKind::ConfigRefused);
        event.config_sha256 = sha256;
        event.reason = Some(reason);
        event
    }

    /// `key_rotated`: signed by the retiring key `old_kid`, it hands the chain to `new_kid`,
    /// whose Ed25519 public key (base64) it carries.
    pub fn key_rotated(old_kid: &str, new_kid: &str, public_key_base64: String) -> Self {
        let mut event = AuditEvent::now(EventKind::KeyRotated);
        event.new_kid = Some(new_kid.to_owned());
        event.public_key = Some(public_key_base64);
        event.reason = Some(format!("signing key {old_kid} retired"));
        event
    }

    /// The owner's issuer (when it has one) and subject.
    fn set_owner(&mut self, owner: &Owner) {
        self.issuer = (!owner.issuer.is_empty()).then(|| owner.issuer.clone());
        self.subject = Some(owner.subject.clone());
    }
}

/// The operator APIs a caller may be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorApi {
    /// `/v1/admin/…`: dead letters.
    Admin,
    /// `GET /v1/audit`.
    Audit,
}

impl OperatorApi {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin API",
            Self::Audit => "audit API",
        }
    }
}

/// What an operator did with a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterHandled {
    /// Queued again (`replayed`).
    Replayed,
    /// Removed for good (`failed`).
    Purged,
}

impl DeadLetterHandled {
    fn kind(self) -> EventKind {
        match self {
            Self::Replayed => EventKind::Replayed,
            Self::Purged => EventKind::Failed,
        }
    }

    /// The past participle the trail and the CLI print.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Purged => "purged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_trigger_whose_fields_cannot_be_read_is_still_accepted_by_id() {
        let Ok(orders) = WorkflowName::parse("orders") else {
            unreachable!("a valid name")
        };
        let problem = EntryError::Missing("input");
        let event = AuditEvent::recovered_accepted(&orders, "req-1", Err(&problem));
        assert_eq!(event.event, EventKind::Accepted);
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
        assert_eq!(event.workflow.as_deref(), Some("orders"));
        assert_eq!(event.input_sha256, None);
        assert_eq!(
            event.reason.as_deref(),
            Some(
                "recovered: the admitting process stopped before releasing it \
                 (audit.fail_closed); its fields cannot be read: entry has no input"
            )
        );
    }
}
