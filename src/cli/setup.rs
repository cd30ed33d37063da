//! Commands that prepare a deployment: `migrate`, `check-config`, `openapi`, `keygen`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{ConfigArg, load, redis_endpoint};
use crate::audit::AuditSigner;
use crate::http::openapi;
use crate::queue::Keys;
use crate::startup::connect_redis;

/// Applies the Redis migrations every configured workflow needs.
pub(super) async fn migrate(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    let redis = connect_redis(&redis_endpoint(&config)?, std::time::Duration::from_secs(5)).await?;
    let names: Vec<_> = config
        .checked_workflows()
        .iter()
        .map(|workflow| workflow.name.clone())
        .collect();
    let ran = crate::migrations::apply(
        &mut redis.clone(),
        &Keys::new(&config.redis.key_prefix),
        &names,
    )
    .await?;
    println!("migrations applied: {ran} step(s) ran");
    Ok(ExitCode::SUCCESS)
}

/// Checks the configuration and prints its digest; warns when no AWS credentials are found.
pub(super) async fn check_config(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    // The digest the trail's config events record: the file and every file it reads.
    let text = std::fs::read_to_string(&arg.config)
        .with_context(|| format!("reading {}", arg.config.display()))?;
    println!(
        "configuration is valid: {} issuer(s), {} workflow(s); sha256 {}",
        config.issuers.len(),
        config.workflows.len(),
        crate::config::digest(&text, &config)
    );
    // Not a configuration error (they may come from the environment later), but the
    // first thing to know when nothing starts.
    let sfn = crate::startup::aws_step_functions(&config).await;
    if let Some(problem) = sfn.credentials_problem().await {
        println!("warning: {problem}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the OpenAPI document, writes it to `path`, or checks that `path` holds it.
pub(super) fn openapi(check: bool, write: bool, path: &Path) -> anyhow::Result<ExitCode> {
    let generated = openapi::document_json()?;
    if check {
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed != generated {
            eprintln!(
                "{} is stale: run `stepgate openapi --write`",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        println!("{} is up to date", path.display());
    } else if write {
        std::fs::write(path, generated).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    } else {
        print!("{generated}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a new audit signing key pair.
pub(super) fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let signer = AuditSigner::generate();
    let public = signer.write_pair(out)?;
    println!(
        "wrote {} (private) and {} (public); key id {}",
        out.display(),
        public.display(),
        signer.kid()
    );
    Ok(ExitCode::SUCCESS)
}
