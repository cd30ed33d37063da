//! The files a configuration names: resolved against the configuration file's directory, and
//! read once at load, so `check-config` finds every problem `serve` would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, Problem};
use crate::audit::AuditSigner;
use crate::auth::jwks::{KeyCache, RefreshPolicy};

impl Config {
    /// Every file this configuration reads, under its key as written; audit export
    /// directories are not files and are left out.
    pub fn files(&self) -> Vec<(String, &Path)> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        if self.audit.enabled {
            files.push(("audit.signing_key".into(), &self.audit.signing_key));
            for (i, path) in self.audit.retired_keys.iter().enumerate() {
                files.push((format!("audit.retired_keys[{i}]"), path));
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if let Some(path) = &issuer.jwks_file {
                files.push((format!("issuers[{i}].jwks_file"), path));
            }
        }
        for (name, workflow) in &self.workflows {
            if let Some(path) = &workflow.input_schema_file {
                files.push((format!("workflows.{name}.input_schema_file"), path));
            }
        }
        files
    }

    /// Makes every relative path absolute against `base` (the configuration file's directory),
    /// so the process finds its files whatever its working directory.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.audit.signing_key);
        self.audit.retired_keys.iter_mut().for_each(resolve);
        resolve(&mut self.audit.files.dir);
        for issuer in &mut self.issuers {
            if let Some(path) = &mut issuer.jwks_file {
                resolve(path);
            }
        }
        for workflow in self.workflows.values_mut() {
            if let Some(path) = &mut workflow.input_schema_file {
                resolve(path);
            }
        }
    }

    /// Reads every key and key set the configuration names, as `serve` will (input schemas
    /// are compiled by [`Config::validate`]); each problem names its key.
    pub(super) fn check_files(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.audit.enabled {
            if let Err(e) = AuditSigner::load(&self.audit.signing_key) {
                problems.push(Problem::new("audit.signing_key", e.to_string()));
            }
            for (i, path) in self.audit.retired_keys.iter().enumerate() {
                if let Err(e) = AuditSigner::load(path) {
                    problems.push(Problem::new(
                        format!("audit.retired_keys[{i}]"),
                        e.to_string(),
                    ));
                }
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let fixed = |text: &str| {
                KeyCache::fixed(issuer.issuer.clone(), text, any_refresh_policy())
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            if let Some(path) = &issuer.jwks_file {
                let checked = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| fixed(&text));
                if let Err(message) = checked {
                    problems.push(Problem::new(format!("issuers[{i}].jwks_file"), message));
                }
            }
            if let Some(Err(message)) = issuer.jwks_inline.as_deref().map(fixed) {
                problems.push(Problem::new(format!("issuers[{i}].jwks_inline"), message));
            }
        }
        problems
    }
}

/// Fixed keys are never refreshed; the policy only has to exist.
fn any_refresh_policy() -> RefreshPolicy {
    RefreshPolicy {
        refetch_cooldown: Duration::from_secs(1),
        refresh_min: Duration::from_secs(1),
        refresh_max: Duration::from_secs(1),
        max_stale: Duration::from_secs(1),
    }
}

/// The SHA-256 of a configuration as it takes effect: its TOML `text` and every file
/// `config` reads (a changed schema or key file changes the policy, not the TOML). A file
/// that cannot be read counts as absent.
pub fn digest(text: &str, config: &Config) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    for (key, path) in config.files() {
        // Each file framed by its key and length: no two layouts hash alike.
        let contents = std::fs::read(path).ok();
        hasher.update(b"\0");
        hasher.update(key.as_bytes());
        match &contents {
            Some(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
            None => hasher.update(b"absent"),
        }
    }
    hex::encode(hasher.finalize())
}
