//! Who may trigger which workflow, and with what input.
//!
//! Deny by default: a caller is allowed when any `allow` rule matches and no `deny` rule
//! does (deny wins). Pure functions over a verified [`Principal`]; no I/O.

pub mod input;
pub mod json_shape;
pub mod rule;

pub use input::{InputError, InputRules, InputViolation, SchemaError};
pub use rule::{ClaimMatcher, ClaimMembership, ClaimTest, Rule};

use crate::auth::Principal;

/// A workflow's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// The outcome of evaluating a policy for a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the allow rule at this index.
    Allowed { rule: usize },
    /// The reason is for the audit trail, logs and `policy explain`, never for the caller.
    Denied { reason: String },
}

/// How each rule fared, for `stepgate policy explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// One line per rule: `deny[0]: matched`, `allow[1]: no (scope workflows:trigger)` …
    pub rules: Vec<String>,
}

/// Evaluates `policy` for `who`.
pub fn authorize(who: &Principal, policy: &Policy) -> Decision {
    if let Some(i) = policy
        .deny
        .iter()
        .position(|rule| rule.first_mismatch(who).is_none())
    {
        return Decision::Denied {
            reason: format!("deny rule {i} matched"),
        };
    }
    let mut failures = Vec::with_capacity(policy.allow.len());
    for (i, rule) in policy.allow.iter().enumerate() {
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

/// Evaluates `policy` for `who` and says how every rule fared.
pub fn explain(who: &Principal, policy: &Policy) -> Explanation {
    let verdict = |kind: &str, i: usize, rule: &Rule, matched: &str| {
        let failed = rule.all_mismatches(who);
        if failed.is_empty() {
            format!("{kind}[{i}]: {matched}")
        } else {
            format!("{kind}[{i}]: does not match ({})", failed.join(", "))
        }
    };
    let mut rules: Vec<String> = policy
        .deny
        .iter()
        .enumerate()
        .map(|(i, r)| verdict("deny", i, r, "matches: DENY"))
        .collect();
    rules.extend(
        policy
            .allow
            .iter()
            .enumerate()
            .map(|(i, r)| verdict("allow", i, r, "matches: allow")),
    );
    Explanation {
        decision: authorize(who, policy),
        rules,
    }
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

    fn rule() -> Rule {
        Rule::default()
    }

    fn allow(rules: Vec<Rule>) -> Policy {
        Policy {
            allow: rules,
            deny: Vec::new(),
        }
    }

    #[test]
    fn no_rules_deny() {
        assert!(matches!(
            authorize(&billing(), &Policy::default()),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let both = Rule {
            clients: vec!["billing-service".into()],
            scopes: vec!["workflows:trigger".into(), "workflows:admin".into()],
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &allow(vec![both])),
            Decision::Denied {
                reason: "rule 0: scope workflows:admin".into()
            }
        );
    }

    #[test]
    fn any_rule_may_allow() {
        let wrong_client = Rule {
            clients: vec!["other".into()],
            ..rule()
        };
        let right_subject = Rule {
            subjects: vec!["billing-service".into()],
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &allow(vec![wrong_client, right_subject])),
            Decision::Allowed { rule: 1 }
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let policy = Policy {
            allow: vec![Rule {
                clients: vec!["billing-service".into()],
                ..rule()
            }],
            deny: vec![Rule {
                member_of: Some(ClaimMembership {
                    claim: "groups".into(),
                    any_of: vec!["eu".into()],
                }),
                ..rule()
            }],
        };
        assert_eq!(
            authorize(&billing(), &policy),
            Decision::Denied {
                reason: "deny rule 0 matched".into()
            }
        );
        let explanation = explain(&billing(), &policy);
        assert_eq!(
            explanation.rules,
            vec!["deny[0]: matches: DENY", "allow[0]: matches: allow"]
        );
    }

    #[test]
    fn client_id_falls_back_to_azp() {
        let who = caller(json!({"sub": "u", "azp": "web"}));
        assert_eq!(
            authorize(
                &who,
                &allow(vec![Rule {
                    clients: vec!["web".into()],
                    ..rule()
                }])
            ),
            Decision::Allowed { rule: 0 }
        );
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let want = allow(vec![Rule {
            scopes: vec!["a".into(), "b".into()],
            ..rule()
        }]);
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
        let member = |values: &[&str]| Rule {
            member_of: Some(ClaimMembership {
                claim: "groups".into(),
                any_of: values.iter().map(|v| v.to_string()).collect(),
            }),
            ..rule()
        };
        assert_eq!(
            authorize(&billing(), &allow(vec![member(&["ops", "eu"])])),
            Decision::Allowed { rule: 0 }
        );
        assert!(matches!(
            authorize(&billing(), &allow(vec![member(&["ops"])])),
            Decision::Denied { .. }
        ));
        let single = caller(json!({"sub": "u", "groups": "ops"}));
        assert_eq!(
            authorize(&single, &allow(vec![member(&["ops"])])),
            Decision::Allowed { rule: 0 }
        );
    }

    #[test]
    fn issuer_condition_compares_exactly() {
        let other = Rule {
            issuer: Some("https://idp/".into()),
            ..rule()
        };
        assert!(matches!(
            authorize(&billing(), &allow(vec![other])),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn empty_rules_are_refused_at_load() {
        let read = |text: &str| serde_json::from_str::<Rule>(text).map_err(|e| e.to_string());
        for empty in [
            "{}",
            r#"{"scopes": [], "clients": [], "subjects": [], "claims": []}"#,
            r#"{"issuer": "https://idp"}"#,
        ] {
            let said = read(empty).err().unwrap_or_default();
            assert!(said.contains("at least one condition"), "{empty}: {said}");
        }
        let empty_membership = read(r#"{"member_of": {"claim": "groups", "any_of": []}}"#);
        assert!(empty_membership.is_err());
        assert!(read(r#"{"scopes": ["a"]}"#).is_ok());
        let unknown_issuer = Rule {
            issuer: Some("https://elsewhere".into()),
            ..rule()
        };
        assert!(unknown_issuer.check(|_| false).is_err());
    }
}
