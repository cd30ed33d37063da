//! `stepgate policy explain`: which rule of a policy lets a caller in, or why none does.

use std::process::ExitCode;

use anyhow::Context;

use super::{ConfigArg, load};
use crate::auth::{Principal, Verifier};
use crate::config::Config;
use crate::policy::Decision;

/// Which policy `policy explain` evaluates.
pub(super) enum PolicySection {
    Workflow(String),
    Admin,
    AuditReaders,
}

pub(super) async fn explain_policy(
    arg: &ConfigArg,
    section: &PolicySection,
    token: Option<&str>,
    claims: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    let (title, policy) = match section {
        PolicySection::Workflow(workflow) => {
            let Some(found) = config
                .checked_workflows()
                .iter()
                .find(|checked| checked.name.as_str() == workflow)
            else {
                anyhow::bail!("no workflow named {workflow:?} in {}", arg.config.display());
            };
            (format!("workflow {}", found.name), found.policy.clone())
        }
        PolicySection::Admin => ("[admin]".to_owned(), config.admin.policy()),
        PolicySection::AuditReaders => {
            ("[audit_readers]".to_owned(), config.audit_readers.policy())
        }
    };
    let Some(caller) = caller_to_explain(&config, token, claims).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let explanation = crate::policy::explain(&caller, &policy);
    let allowed = matches!(explanation.decision, Decision::Allowed { .. });
    match &explanation.decision {
        Decision::Allowed { rule } => println!("{title}: ALLOWED by allow[{rule}]"),
        Decision::Denied { reason } => println!("{title}: DENIED ({reason})"),
    }
    println!(
        "  caller: issuer {}, subject {}, client {}, scopes [{}]",
        caller.issuer,
        caller.subject,
        caller.client_id.as_deref().unwrap_or("(none)"),
        caller.scopes.join(" ")
    );
    for line in &explanation.rules {
        println!("  {line}");
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The caller to explain: a verified `token` (`-`: read from stdin), or `claims` taken as
/// they are. `None` when the token is refused (said on stdout).
async fn caller_to_explain(
    config: &Config,
    token: Option<&str>,
    claims: Option<&std::path::Path>,
) -> anyhow::Result<Option<Principal>> {
    Ok(Some(match (token, claims) {
        (Some(token), _) => {
            let token = if token == "-" {
                std::io::read_to_string(std::io::stdin())?.trim().to_owned()
            } else {
                token.to_owned()
            };
            let verifier = Verifier::new(&config.issuers, reqwest::Client::new(), 0, None)?;
            for issuer in verifier.issuers() {
                if let Err(e) = issuer.keys.refresh().await {
                    eprintln!("issuer {}: {e}", issuer.config.issuer);
                }
            }
            match verifier.verify(&token).await {
                Ok(principal) => (*principal).clone(),
                Err(e) => {
                    println!("token refused: {e}");
                    return Ok(None);
                }
            }
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON object", path.display()))?;
            let issuer = claims
                .get("iss")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            Principal::from_claims(issuer, claims, String::new())
        }
        (None, None) => anyhow::bail!("give --token or --claims"),
    }))
}
