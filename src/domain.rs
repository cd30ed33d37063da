//! Inputs become typed values at the edge ("parse, don't validate").
//!
//! A [`WorkflowName`] is safe to embed in URLs, Redis keys and Step Functions execution
//! names; a [`RequestId`] names one accepted trigger and doubles as the execution name, which
//! is what makes a redelivered queue entry unable to start a second execution.

use std::fmt;

use uuid::Uuid;

/// The longest workflow name: `{workflow}_{32 hex}` must fit Step Functions' 80-character
/// execution-name limit.
pub const MAX_WORKFLOW_NAME_LEN: usize = 80 - 1 - 32;

/// Why a workflow name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkflowNameError {
    #[error("a workflow name must not be empty")]
    Empty,
    #[error("a workflow name is at most {MAX_WORKFLOW_NAME_LEN} characters")]
    TooLong,
    #[error(
        "a workflow name uses only lowercase letters, digits and '-', and starts with a letter or digit"
    )]
    InvalidCharacter,
}

/// The name of a configured workflow: `[a-z0-9][a-z0-9-]*`, at most 47 characters.
///
/// The alphabet rules out path tricks (`..`, `/`), Redis hash-tag tricks (`{`, `}`) and key
/// separators (`:`), and keeps `_` free as the separator inside a [`RequestId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkflowName(String);

impl WorkflowName {
    pub fn parse(raw: &str) -> Result<Self, WorkflowNameError> {
        let first = raw.chars().next().ok_or(WorkflowNameError::Empty)?;
        if raw.len() > MAX_WORKFLOW_NAME_LEN {
            return Err(WorkflowNameError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if first == '-' || !raw.chars().all(allowed) {
            return Err(WorkflowNameError::InvalidCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a request id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestIdError {
    #[error("a request id has the form <workflow>_<32 hex digits>")]
    Malformed,
}

/// One accepted trigger: `{workflow}_{uuid v7 as 32 lowercase hex}`.
///
/// It is also the Step Functions execution name (letters, digits, `-`, `_`; at most 80), so
/// the execution is findable from the request and a retried start is idempotent. The
/// workflow part lets the status endpoint find the request's Redis hash slot without an
/// index that would live in another slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId {
    workflow: WorkflowName,
    id: Uuid,
}

impl RequestId {
    /// A fresh id; UUID v7 so ids sort by creation time.
    pub fn generate(workflow: WorkflowName) -> Self {
        Self {
            workflow,
            id: Uuid::now_v7(),
        }
    }

    pub fn parse(raw: &str) -> Result<Self, RequestIdError> {
        let (workflow, id) = raw.rsplit_once('_').ok_or(RequestIdError::Malformed)?;
        let workflow = WorkflowName::parse(workflow).map_err(|_| RequestIdError::Malformed)?;
        // Only the canonical lowercase simple form, so one request has exactly one spelling.
        let canonical =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let id = Uuid::try_parse(id)
            .ok()
            .filter(|_| canonical)
            .ok_or(RequestIdError::Malformed)?;
        Ok(Self { workflow, id })
    }

    pub fn workflow(&self) -> &WorkflowName {
        &self.workflow
    }

    /// The part that is unique within the workflow (used in Redis keys).
    pub fn local_part(&self) -> String {
        self.id.simple().to_string()
    }

    /// The Step Functions execution name for this request.
    pub fn execution_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.workflow, self.id.simple())
    }
}

/// Who owns a request: the verified issuer and subject of the caller that made it. Stored
/// as `"<issuer> <subject>"` (issuers are URLs, without spaces); only that caller may read
/// the request's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Empty for an owner stored without an issuer.
    pub issuer: String,
    pub subject: String,
}

impl Owner {
    /// Reads the stored form; text without a space is a subject alone.
    pub fn parse(stored: &str) -> Self {
        match stored.split_once(' ') {
            Some((issuer, subject)) => Self {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
            },
            None => Self {
                issuer: String::new(),
                subject: stored.to_owned(),
            },
        }
    }

    /// 32 hex digits of SHA-256 over the stored form: what keys and statuses hold instead
    /// of the identity itself (caller-chosen text, of any length).
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let mut digest = hex::encode(sha2::Sha256::digest(self.to_string().as_bytes()));
        digest.truncate(32);
        digest
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.issuer.is_empty() {
            f.write_str(&self.subject)
        } else {
            write!(f, "{} {}", self.issuer, self.subject)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_names_keep_to_a_safe_alphabet() {
        assert!(WorkflowName::parse("orders").is_ok());
        assert!(WorkflowName::parse("eu-payouts-2").is_ok());
        for bad in [
            "", "-x", "Orders", "a_b", "a/b", "..", "a{b}", "a:b", "a b", "ordérs",
        ] {
            assert!(WorkflowName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            WorkflowName::parse(&"a".repeat(MAX_WORKFLOW_NAME_LEN + 1)),
            Err(WorkflowNameError::TooLong)
        );
    }

    #[test]
    fn request_ids_round_trip_and_fit_an_execution_name() -> Result<(), Box<dyn std::error::Error>>
    {
        let workflow = WorkflowName::parse(&"w".repeat(MAX_WORKFLOW_NAME_LEN))?;
        let id = RequestId::generate(workflow);
        let name = id.execution_name();
        assert!(name.len() <= 80);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(RequestId::parse(&id.to_string())?, id);
        Ok(())
    }

    #[test]
    fn request_ids_have_one_spelling() {
        for bad in [
            "orders",
            "orders_",
            "orders_0192F5C4E3B87D8E9A6B1C2D3E4F5A6B",
            "orders_0192f5c4-e3b8-7d8e-9a6b-1c2d3e4f5a6b",
            "Orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
            "_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn an_owner_reads_back_as_it_was_stored() {
        for stored in ["https://idp.example.com billing-service", "legacy-subject"] {
            assert_eq!(Owner::parse(stored).to_string(), stored);
        }
        let owner = Owner::parse("https://idp.example.com svc with spaces");
        assert_eq!(owner.issuer, "https://idp.example.com");
        assert_eq!(owner.subject, "svc with spaces");
    }
}
