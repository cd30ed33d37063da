//! One policy rule and its conditions on the caller's claims.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::Principal;

/// A rule of a policy's `allow` or `deny` list. Every condition it states must hold; an
/// absent condition does not restrict.
///
/// A rule must state at least one condition on the caller, so no list can open to everyone by
/// accident: this is enforced while the rule is read, wherever a policy appears in the
/// configuration (workflows, `admin`, `audit_readers` and any section added later).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(try_from = "RuleFields")]
pub struct Rule {
    /// The token's `iss` must be this issuer.
    pub issuer: Option<String>,
    /// `sub` must be one of these.
    pub subjects: Vec<String>,
    /// `client_id` (or `azp`) must be one of these.
    pub clients: Vec<String>,
    /// The token must carry all of these scopes.
    pub scopes: Vec<String>,
    /// A claim (string or array, e.g. `groups` or `roles`) must contain one of the values.
    pub member_of: Option<ClaimMembership>,
    /// Conditions on any claim, by path.
    pub claims: Vec<ClaimMatcher>,
}

/// A rule as written, before it is known to state a condition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    issuer: Option<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    member_of: Option<ClaimMembership>,
    #[serde(default)]
    claims: Vec<ClaimMatcher>,
}

/// Why a written rule is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "a rule must state at least one condition on the caller (non-empty subjects, clients, \
         scopes, member_of or claims); `issuer` alone would match every token of that issuer"
    )]
    NoCondition,
    #[error("member_of needs a claim and at least one value")]
    EmptyMembership,
    #[error("issuer {0:?} is not among the configured issuers")]
    UnknownIssuer(String),
}

impl TryFrom<RuleFields> for Rule {
    type Error = RuleError;

    fn try_from(fields: RuleFields) -> Result<Self, RuleError> {
        if let Some(m) = &fields.member_of
            && (m.claim.is_empty() || m.any_of.is_empty())
        {
            return Err(RuleError::EmptyMembership);
        }
        let rule = Rule {
            issuer: fields.issuer,
            subjects: fields.subjects,
            clients: fields.clients,
            scopes: fields.scopes,
            member_of: fields.member_of,
            claims: fields.claims,
        };
        if !rule.states_a_condition() {
            return Err(RuleError::NoCondition);
        }
        Ok(rule)
    }
}

/// `member_of = { claim = "groups", any_of = ["payments"] }`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimMembership {
    pub claim: String,
    pub any_of: Vec<String>,
}

/// A condition on the claim at `path`: `{ path = "org.tier", equals = "gold" }`.
///
/// A path is either dotted (`org.tier`: object members) or an RFC 6901 JSON Pointer
/// (`/https:~1~1example.com~1roles`), for claim names that contain dots.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawClaimMatcher")]
pub struct ClaimMatcher {
    pub path: String,
    pointer: String,
    pub test: ClaimTest,
}

/// What the claim must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimTest {
    /// Exactly this JSON value.
    Equals(Value),
    /// One of these JSON values.
    OneOf(Vec<Value>),
    /// An array containing this value.
    Contains(Value),
    /// A string starting with this.
    Prefix(String),
    /// A string matching this pattern (`*` any run, `?` one character).
    Glob(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimMatcher {
    path: String,
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    contains: Option<Value>,
    prefix: Option<String>,
    glob: Option<String>,
}

/// Why a written claim matcher is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimMatcherError {
    #[error("claim matcher on {0:?} needs exactly one of equals, one_of, contains, prefix, glob")]
    NotOneTest(String),
    #[error("claim path {0:?} is empty or has an empty segment")]
    EmptySegment(String),
    /// Every string starts with "": most often a templated value left empty. A claim that
    /// may hold anything says so with `glob = "*"`.
    #[error(
        "claim matcher on {0:?} has an empty prefix, which every string has (write glob = \"*\" to mean any value)"
    )]
    EmptyPrefix(String),
}

impl TryFrom<RawClaimMatcher> for ClaimMatcher {
    type Error = ClaimMatcherError;

    fn try_from(raw: RawClaimMatcher) -> Result<Self, ClaimMatcherError> {
        let tests = [
            raw.equals.map(ClaimTest::Equals),
            raw.one_of.map(ClaimTest::OneOf),
            raw.contains.map(ClaimTest::Contains),
            raw.prefix.map(ClaimTest::Prefix),
            raw.glob.map(ClaimTest::Glob),
        ];
        let mut given = tests.into_iter().flatten();
        let (Some(test), None) = (given.next(), given.next()) else {
            return Err(ClaimMatcherError::NotOneTest(raw.path));
        };
        if matches!(&test, ClaimTest::Prefix(prefix) if prefix.is_empty()) {
            return Err(ClaimMatcherError::EmptyPrefix(raw.path));
        }
        let pointer = to_pointer(&raw.path)?;
        Ok(Self {
            path: raw.path,
            pointer,
            test,
        })
    }
}

/// A dotted path or a JSON Pointer, as a JSON Pointer.
fn to_pointer(path: &str) -> Result<String, ClaimMatcherError> {
    if path.starts_with('/') {
        return Ok(path.to_owned());
    }
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(ClaimMatcherError::EmptySegment(path.to_owned()));
    }
    Ok(path
        .split('.')
        .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
        .collect())
}

impl ClaimMatcher {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claim_at(claims, &self.pointer) else {
            return false;
        };
        match &self.test {
            ClaimTest::Equals(want) => value == want,
            ClaimTest::OneOf(options) => options.contains(value),
            ClaimTest::Contains(want) => value.as_array().is_some_and(|items| items.contains(want)),
            ClaimTest::Prefix(prefix) => value
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            ClaimTest::Glob(pattern) => value.as_str().is_some_and(|s| glob_matches(pattern, s)),
        }
    }
}

/// The claim at a JSON Pointer into the claims object.
fn claim_at<'a>(claims: &'a Map<String, Value>, pointer: &str) -> Option<&'a Value> {
    let rest = pointer.strip_prefix('/')?;
    let (first, tail) = rest.split_once('/').map_or((rest, ""), |(f, t)| (f, t));
    let first = first.replace("~1", "/").replace("~0", "~");
    let value = claims.get(&first)?;
    if tail.is_empty() {
        Some(value)
    } else {
        value.pointer(&format!("/{tail}"))
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer matching with backtracking to the last `*`: linear in practice,
    // never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl Rule {
    /// Whether the rule restricts who the caller is (the issuer alone does not).
    pub fn states_a_condition(&self) -> bool {
        !self.subjects.is_empty()
            || !self.clients.is_empty()
            || !self.scopes.is_empty()
            || self.member_of.is_some()
            || !self.claims.is_empty()
    }

    /// Rejects rules that can never match a configured issuer (what a rule says alone is
    /// checked when it is read).
    pub fn check(&self, issuer_is_known: impl Fn(&str) -> bool) -> Result<(), RuleError> {
        match &self.issuer {
            Some(iss) if !issuer_is_known(iss) => Err(RuleError::UnknownIssuer(iss.clone())),
            _ => Ok(()),
        }
    }

    /// `None` when the rule matches, otherwise the first condition that failed.
    pub fn first_mismatch(&self, who: &Principal) -> Option<String> {
        self.mismatches(who, true).into_iter().next()
    }

    /// Every condition `who` fails, in the order they are written (for `policy explain`).
    pub fn all_mismatches(&self, who: &Principal) -> Vec<String> {
        self.mismatches(who, false)
    }

    /// The failed conditions; with `first_only`, the evaluation stops at the first.
    fn mismatches(&self, who: &Principal, first_only: bool) -> Vec<String> {
        let mut failed = Vec::new();
        let mut fail = |why: String| {
            failed.push(why);
            first_only
        };
        if let Some(iss) = &self.issuer
            && *iss != who.issuer
            && fail("issuer".into())
        {
            return failed;
        }
        if !self.subjects.is_empty()
            && !self.subjects.contains(&who.subject)
            && fail("subject".into())
        {
            return failed;
        }
        let client_listed = who
            .client_id
            .as_ref()
            .is_some_and(|c| self.clients.contains(c));
        if !self.clients.is_empty() && !client_listed && fail("client".into()) {
            return failed;
        }
        for missing in self.scopes.iter().filter(|s| !who.scopes.contains(s)) {
            if fail(format!("scope {missing}")) {
                return failed;
            }
        }
        if let Some(m) = &self.member_of
            && !who.claim_contains_any(&m.claim, &m.any_of)
            && fail(format!("member_of {}", m.claim))
        {
            return failed;
        }
        for matcher in self.claims.iter().filter(|m| !m.holds(&who.claims)) {
            if fail(format!("claim {}", matcher.path)) {
                return failed;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn matcher(toml_text: &str) -> Result<ClaimMatcher, String> {
        #[derive(Deserialize)]
        struct One {
            m: ClaimMatcher,
        }
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(&format!(
            "m = {toml_text}"
        )))
        .extract::<One>()
        .map(|o| o.m)
        .map_err(|e| e.to_string())
    }

    fn claims() -> Map<String, Value> {
        json!({"org": {"tier": "gold", "id": 7}, "groups": ["payments", "eu"], "email": "ops@example.com",
               "https://example.com/roles": ["admin"]})
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn each_matcher_tests_the_claim_at_its_path() -> Result<(), String> {
        let c = claims();
        assert!(matcher(r#"{ path = "org.tier", equals = "gold" }"#)?.holds(&c));
        assert!(matcher(r#"{ path = "org.id", equals = 7 }"#)?.holds(&c));
        assert!(
            !matcher(r#"{ path = "org.id", equals = "7" }"#)?.holds(&c),
            "types matter"
        );
        assert!(matcher(r#"{ path = "org.tier", one_of = ["silver", "gold"] }"#)?.holds(&c));
        assert!(matcher(r#"{ path = "groups", contains = "eu" }"#)?.holds(&c));
        assert!(
            !matcher(r#"{ path = "email", contains = "ops" }"#)?.holds(&c),
            "contains is for arrays"
        );
        assert!(matcher(r#"{ path = "email", prefix = "ops@" }"#)?.holds(&c));
        assert!(matcher(r#"{ path = "email", glob = "*@example.com" }"#)?.holds(&c));
        assert!(
            matcher(r#"{ path = "/https:~1~1example.com~1roles", contains = "admin" }"#)?.holds(&c)
        );
        assert!(
            !matcher(r#"{ path = "org.missing", equals = "x" }"#)?.holds(&c),
            "a missing claim never matches"
        );
        Ok(())
    }

    #[test]
    fn a_matcher_states_exactly_one_test_and_a_sane_path() {
        assert!(matcher(r#"{ path = "a" }"#).is_err());
        assert!(matcher(r#"{ path = "a", equals = 1, prefix = "x" }"#).is_err());
        assert!(matcher(r#"{ path = "a..b", equals = 1 }"#).is_err());
        assert!(
            matcher(r#"{ path = "sub", prefix = "" }"#).is_err(),
            "an empty prefix would match everyone"
        );
        assert!(
            matcher(r#"{ path = "a", equal = 1 }"#).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn globs_match_whole_strings() {
        for (pattern, text, expected) in [
            ("pay*", "payments", true),
            ("pay*", "repay", false),
            ("*-svc", "billing-svc", true),
            ("b?ll*", "billing", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }
}
