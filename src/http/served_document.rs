//! `GET /openapi.json`: the generated document (as committed in `openapi/openapi.json`),
//! plus what only the running configuration knows: for each issuer whose discovery names a
//! token endpoint, an OAuth 2.0 client-credentials scheme with the scopes the policies use,
//! offered next to `bearer` on every protected operation — so the docs' "Authorize" dialog
//! gets a token from the company's identity provider, as a microservice does.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::runtime::Runtime;

/// `document` with the running configuration's client-credentials schemes.
pub fn with_identity_providers(document: &Value, runtime: &Runtime) -> Value {
    let mut served = document.clone();
    let scopes = policy_scopes(runtime);
    let mut issuers: Vec<_> = runtime
        .verifier
        .issuers()
        .filter_map(|issuer| {
            issuer
                .keys
                .token_endpoint()
                .map(|token_url| (issuer.config.issuer.clone(), token_url))
        })
        .collect();
    issuers.sort();
    let mut names = Vec::new();
    for (i, (issuer, token_url)) in issuers.iter().enumerate() {
        let name = if i == 0 {
            "client_credentials".to_owned()
        } else {
            format!("client_credentials_{}", i + 1)
        };
        let scheme = json!({
            "type": "oauth2",
            "description": format!("Client credentials at {issuer}: a service's own client id and secret."),
            "flows": {"clientCredentials": {
                "tokenUrl": token_url,
                "scopes": scopes.iter().map(|s| (s.clone(), Value::String(String::new()))).collect::<Map<_, _>>(),
            }},
        });
        if let Some(schemes) = served
            .pointer_mut("/components/securitySchemes")
            .and_then(Value::as_object_mut)
        {
            schemes.insert(name.clone(), scheme);
        }
        names.push(name);
    }
    if names.is_empty() {
        return served;
    }
    // Every operation that takes a bearer token also takes these.
    if let Some(paths) = served.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in operation.values_mut() {
                let Some(security) = op.get_mut("security").and_then(Value::as_array_mut) else {
                    continue;
                };
                if security.iter().any(|s| s.get("bearer").is_some()) {
                    security.extend(names.iter().map(|name| json!({ name: [] })));
                }
            }
        }
    }
    served
}

/// Scopes named by any allow rule (workflows, admin, audit readers).
fn policy_scopes(runtime: &Runtime) -> BTreeSet<String> {
    runtime
        .workflows
        .values()
        .map(|w| &w.policy)
        .chain([&runtime.admin, &runtime.audit_readers])
        .flat_map(|policy| policy.allow.iter())
        .flat_map(|rule| rule.scopes.iter().cloned())
        .collect()
}
