//! Who may call, beyond a workflow's own policy: `[auth]` (common to all issuers), and
//! `[admin]`, `[audit_readers]` (the operator APIs).

use serde::Deserialize;

use crate::policy::{Policy, Rule};

/// `[admin]`, `[audit_readers]`: who may use an operator API, as rules over verified tokens
/// (as for a workflow: any allow rule matches and no deny rule does). Empty: nobody.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default)]
    pub deny: Vec<Rule>,
}

impl AccessConfig {
    /// The policy these rules make.
    pub fn policy(&self) -> Policy {
        Policy {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        }
    }
}

/// `[auth]`: settings common to all issuers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Verified tokens remembered (by SHA-256) until they expire, so repeated calls with the
    /// same token skip signature work; 0 turns the cache off.
    pub token_cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_cache_entries: 10_000,
        }
    }
}
