//! Who may trigger which workflow: deny by default, any matching allow rule grants.
//!
//! Pure functions over a verified [`Principal`]; no I/O, so every rule is unit-tested here.

use serde::Deserialize;

use crate::auth::Principal;

/// One allow rule of a workflow. Every condition it states must hold; an absent condition
/// does not restrict. A rule must state at least one condition (checked at load).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The token's `iss` must be this issuer.
    pub issuer: Option<String>,
    /// `sub` must be one of these.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// `client_id` (or `azp`) must be one of these.
    #[serde(default)]
    pub clients: Vec<String>,
    /// The token must carry all of these scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A claim (string or array, e.g. `groups` or `roles`) must contain one of the values.
    pub member_of: Option<ClaimMembership>,
}

/// `member_of = { claim = "groups", any_of = ["payments"] }`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimMembership {
    pub claim: String,
    pub any_of: Vec<String>,
}

/// The outcome of evaluating a workflow's rules for a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule at this index.
    Allowed { rule: usize },
    /// No rule matched; the reason is for the audit trail and logs, never for the caller.
    Denied { reason: String },
}

impl AllowRule {
    /// Rejects rules that would allow everyone or can never match a configured issuer.
    pub fn check(&self, issuer_is_known: impl Fn(&str) -> bool) -> Result<(), String> {
        let states_nothing = self.issuer.is_none()
            && self.subjects.is_empty()
            && self.clients.is_empty()
            && self.scopes.is_empty()
            && self.member_of.is_none();
        if states_nothing {
            return Err("an allow rule must state at least one condition".into());
        }
        if let Some(iss) = &self.issuer
            && !issuer_is_known(iss)
        {
            return Err(format!(
                "issuer {iss:?} is not among the configured issuers"
            ));
        }
        if let Some(m) = &self.member_of
            && (m.claim.is_empty() || m.any_of.is_empty())
        {
            return Err("member_of needs a claim and at least one value".into());
        }
        Ok(())
    }

    /// `None` when the rule matches, otherwise the first condition that failed.
    fn first_mismatch(&self, who: &Principal) -> Option<String> {
        if let Some(iss) = &self.issuer
            && *iss != who.issuer
        {
            return Some("issuer".into());
        }
        if !self.subjects.is_empty() && !self.subjects.contains(&who.subject) {
            return Some("subject".into());
        }
        if !self.clients.is_empty()
            && !who
                .client_id
                .as_ref()
                .is_some_and(|c| self.clients.contains(c))
        {
            return Some("client".into());
        }
        if let Some(missing) = self.scopes.iter().find(|s| !who.scopes.contains(s)) {
            return Some(format!("scope {missing}"));
        }
        if let Some(m) = &self.member_of
            && !who.claim_contains_any(&m.claim, &m.any_of)
        {
            return Some(format!("member_of {}", m.claim));
        }
        None
    }
}

/// Evaluates `rules` for `who`: the first matching rule allows; none matching denies.
pub fn authorize(who: &Principal, rules: &[AllowRule]) -> Decision {
    let mut failures = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        match rule.first_mismatch(who) {
            None => return Decision::Allowed { rule: i },
            Some(why) => failures.push(format!("rule {i}: {why}")),
        }
    }
    let reason = if failures.is_empty() {
        "no allow rule".to_owned()
    } else {
        failures.join("; ")
    };
    Decision::Denied { reason }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn caller(claims: serde_json::Value) -> Principal {
        let map = claims.as_object().cloned().unwrap_or_default();
        Principal::from_claims("https://idp".into(), map, "h".into())
    }

    fn billing() -> Principal {
        caller(
            json!({"sub": "billing-service", "client_id": "billing-service",
                      "scope": "workflows:trigger workflows:read", "groups": ["payments", "eu"]}),
        )
    }

    fn rule() -> AllowRule {
        AllowRule::default()
    }

    #[test]
    fn no_rules_deny() {
        assert!(matches!(
            authorize(&billing(), &[]),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let both = AllowRule {
            clients: vec!["billing-service".into()],
            scopes: vec!["workflows:trigger".into(), "workflows:admin".into()],
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &[both]),
            Decision::Denied {
                reason: "rule 0: scope workflows:admin".into()
            }
        );
    }

    #[test]
    fn any_rule_may_allow() {
        let wrong_client = AllowRule {
            clients: vec!["other".into()],
            ..rule()
        };
        let right_subject = AllowRule {
            subjects: vec!["billing-service".into()],
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &[wrong_client, right_subject]),
            Decision::Allowed { rule: 1 }
        );
    }

    #[test]
    fn client_id_falls_back_to_azp() {
        let who = caller(json!({"sub": "u", "azp": "web"}));
        assert_eq!(
            authorize(
                &who,
                &[AllowRule {
                    clients: vec!["web".into()],
                    ..rule()
                }]
            ),
            Decision::Allowed { rule: 0 }
        );
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let want = [AllowRule {
            scopes: vec!["a".into(), "b".into()],
            ..rule()
        }];
        assert_eq!(
            authorize(&caller(json!({"sub": "u", "scp": ["b", "a"]})), &want),
            Decision::Allowed { rule: 0 }
        );
        assert!(matches!(
            authorize(&caller(json!({"sub": "u", "scope": "a"})), &want),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn membership_in_an_array_or_string_claim() {
        let member = |values: &[&str]| AllowRule {
            member_of: Some(ClaimMembership {
                claim: "groups".into(),
                any_of: values.iter().map(|v| v.to_string()).collect(),
            }),
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &[member(&["ops", "eu"])]),
            Decision::Allowed { rule: 0 }
        );
        assert!(matches!(
            authorize(&billing(), &[member(&["ops"])]),
            Decision::Denied { .. }
        ));
        let single = caller(json!({"sub": "u", "groups": "ops"}));
        assert_eq!(
            authorize(&single, &[member(&["ops"])]),
            Decision::Allowed { rule: 0 }
        );
    }

    #[test]
    fn issuer_condition_compares_exactly() {
        let other = AllowRule {
            issuer: Some("https://idp/".into()),
            ..rule()
        };
        assert!(matches!(
            authorize(&billing(), &[other]),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn empty_rules_are_refused_at_load() {
        assert!(rule().check(|_| true).is_err());
        let unknown_issuer = AllowRule {
            issuer: Some("https://elsewhere".into()),
            ..rule()
        };
        assert!(unknown_issuer.check(|_| false).is_err());
    }
}
