//! What a configuration reload replaces, as one value: the trusted issuers and the
//! workflows. Requests take a snapshot (`Arc`) at their start, so a reload is atomic for
//! them: a request sees the old configuration or the new one, never a mix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::auth::verifier::TrustedIssuer;
use crate::config::{Config, Workflow};
use crate::domain::WorkflowName;
use crate::policy::Policy;

/// How long building a runtime waits for new issuers' keys; a slow IdP delays readiness,
/// not start-up or a reload.
const INITIAL_KEY_LOAD: Duration = Duration::from_secs(5);
/// The longest pause between key fetch attempts while they fail.
const KEY_RETRY_MAX: Duration = Duration::from_secs(30);

/// Issuers and workflows of one configuration.
pub struct Runtime {
    pub verifier: Verifier,
    pub workflows: HashMap<WorkflowName, Arc<Workflow>>,
    /// SHA-256 (hex) of the configuration file this came from.
    pub config_sha256: String,
    /// Each caller's limit over all workflows.
    pub caller_limit: Option<crate::config::Rate>,
    /// Who may use the admin API.
    pub admin: Policy,
    /// Who may read the audit trail.
    pub audit_readers: Policy,
}

impl Runtime {
    /// Builds from `config`, keeping the keys (and their refresh) of issuers whose settings
    /// did not change since `previous`; waits a bounded time for new issuers' keys.
    pub async fn build(
        config: &Config,
        http: &reqwest::Client,
        config_sha256: String,
        previous: Option<&Runtime>,
    ) -> anyhow::Result<Self> {
        let verifier = Verifier::new(
            &config.issuers,
            http.clone(),
            config.auth.token_cache_entries,
            previous.map(|p| &p.verifier),
        )?;
        let loads = verifier.issuers().filter(|issuer| !issuer.keys.is_loaded()).map(|issuer| async move {
            match tokio::time::timeout(INITIAL_KEY_LOAD, issuer.keys.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(issuer = %issuer.config.issuer, error = %e, "issuer keys not loaded yet"),
                Err(_) => tracing::warn!(issuer = %issuer.config.issuer, "issuer keys not loaded yet: timed out"),
            }
        });
        futures_util::future::join_all(loads).await;
        Ok(Self {
            verifier,
            workflows: config
                .checked_workflows()
                .iter()
                .map(|workflow| (workflow.name.clone(), Arc::clone(workflow)))
                .collect(),
            config_sha256,
            caller_limit: config.rate_limits.per_caller,
            admin: config.admin.policy(),
            audit_readers: config.audit_readers.policy(),
        })
    }

    /// What the drain serves under this configuration, in name order.
    pub fn drain_targets(&self) -> Vec<Arc<Workflow>> {
        let mut targets: Vec<Arc<Workflow>> = self.workflows.values().cloned().collect();
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        targets
    }
}

/// One background task per issuer that keeps its keys fresh; follows reloads.
#[derive(Default)]
pub struct KeyRefreshers {
    running: HashMap<String, (Arc<TrustedIssuer>, CancellationToken)>,
}

impl KeyRefreshers {
    /// Starts refreshers for `runtime`'s new issuers and stops those of issuers it dropped
    /// or replaced; an unchanged issuer keeps its refresher.
    pub fn follow(&mut self, runtime: &Runtime, shutdown: &CancellationToken) {
        let current: HashMap<&str, &Arc<TrustedIssuer>> = runtime
            .verifier
            .issuers()
            .map(|i| (i.config.issuer.as_str(), i))
            .collect();
        self.running.retain(|url, (issuer, stop)| {
            let keep = current
                .get(url.as_str())
                .is_some_and(|now| Arc::ptr_eq(now, issuer));
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (url, issuer) in current {
            if !self.running.contains_key(url) {
                let stop = shutdown.child_token();
                tokio::spawn(refresh_keys(Arc::clone(issuer), stop.clone()));
                self.running
                    .insert(url.to_owned(), (Arc::clone(issuer), stop));
            }
        }
    }
}

/// Keeps one issuer's keys fresh: when due (per the JWKS response's `Cache-Control`), and
/// with backoff while fetching fails; meanwhile the last good keys keep serving.
async fn refresh_keys(issuer: Arc<TrustedIssuer>, stop: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let wait = match issuer.keys.next_refresh_in() {
            // Fixed keys: nothing to refresh.
            None => return,
            Some(due) if issuer.keys.is_loaded() && !failing => due.max(Duration::from_secs(1)),
            Some(_) => pause,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        match issuer.keys.refresh().await {
            Ok(_) => {
                failing = false;
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "refreshing issuer keys failed");
                failing = true;
                pause = (pause * 2).min(KEY_RETRY_MAX);
            }
        }
    }
}
