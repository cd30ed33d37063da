//! Configuration reload: on SIGHUP, or when the file's content changes.
//!
//! Issuers and workflows (policies, input rules, state machines, the set of workflows) are
//! replaced atomically: the new configuration is loaded and validated, new issuers' keys
//! fetched and new workflows' queues prepared *before* it is installed. An invalid file, or
//! one that changes sections only a restart can change (`server`, `redis`, `aws`, `worker`,
//! `audit`, `log`), is refused with a clear log line and the running configuration stays.
//! Every reload, installed or refused, is audited with the configuration's SHA-256 (the file
//! and every file it reads: schemas, key sets, keys), and a change to any of them is noticed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::redis_conn::RedisConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditEvent;
use crate::config::Config;
use crate::config::Workflow;
use crate::queue::Keys;
use crate::runtime::{KeyRefreshers, Runtime};
use crate::state::AppState;

/// Owns the running configuration and replaces it on request.
pub struct Reloader {
    pub path: PathBuf,
    pub state: AppState,
    pub http: reqwest::Client,
    pub redis: RedisConnection,
    pub keys: Keys,
    pub targets: watch::Sender<Vec<Arc<Workflow>>>,
    pub refreshers: KeyRefreshers,
    /// The installed configuration, and the SHA-256 of the file content last looked at
    /// (with the files the installed configuration reads).
    pub current: Config,
    pub last_seen_sha256: String,
    /// Why the content last looked at was refused, while it stays refused, and when to try
    /// it again (a file it names may appear, a partner may come back); never, for a change
    /// only a restart can make. A refusal is recorded again only when its reason changes.
    pub refusal: Option<Refusal>,
}

/// A refused change that stays on disk.
#[derive(Debug, Clone)]
pub struct Refusal {
    reason: String,
    /// When to try again (`None`: not until the content changes), and the pause after that.
    retry_at: Option<Instant>,
    pause: Duration,
}

/// The first pause before a refused change is tried again; it doubles up to the longest.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);

impl Reloader {
    /// Reloads on SIGHUP, and whenever the file's content changes (checked every `poll`).
    pub async fn run(mut self, poll: Duration, shutdown: CancellationToken) {
        let mut hangup = hangup_signals();
        let mut ticker = tokio::time::interval(if poll.is_zero() {
            Duration::from_secs(3600)
        } else {
            poll
        });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = hangup.recv() => self.reload(&shutdown, true).await,
                _ = ticker.tick(), if !poll.is_zero() => self.reload(&shutdown, false).await,
            }
        }
    }

    /// Reloads now. Without `forced`, only when the file's content changed since last seen.
    pub async fn reload(&mut self, shutdown: &CancellationToken, forced: bool) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                if forced {
                    // Recorded, but not remembered as the content's refusal: there is none.
                    let reason = format!("cannot read {}: {e}", self.path.display());
                    self.record_refusal(None, reason).await;
                }
                return;
            }
        };
        // The files the running configuration reads count too: a changed schema file is a
        // changed policy. (They are small; read in place like the poll's own file.)
        let seen = crate::config::digest(&text, &self.current);
        let changed = seen != self.last_seen_sha256;
        let retry_due = self
            .refusal
            .as_ref()
            .and_then(|refusal| refusal.retry_at)
            .is_some_and(|at| Instant::now() >= at);
        if !forced && !changed && !retry_due {
            return;
        }
        if changed {
            self.refusal = None;
        }
        self.last_seen_sha256.clone_from(&seen);
        // Recorded when asked for, when the content changed, or when the reason did.
        let report = forced || changed;
        let config = match Config::from_file_text(&text, &self.path) {
            Ok(config) => config,
            // A file it names may appear: worth trying again.
            Err(e) => return self.refused(Some(seen), e.to_string(), report, true).await,
        };
        // Hashed over the files the new configuration reads: what the trail says took effect.
        let sha256 = crate::config::digest(&text, &config);
        match self.install(config, &sha256, shutdown).await {
            Ok(workflows) => {
                // The next poll hashes with the files the new configuration reads.
                self.last_seen_sha256 = crate::config::digest(&text, &self.current);
                self.refusal = None;
                tracing::info!(config.sha256 = %sha256, workflows, "configuration reloaded");
                self.state
                    .audit
                    .record(AuditEvent::config_reloaded(sha256))
                    .await;
            }
            Err(e) => {
                // Only a restart makes a restart-only change, and a state machine's type
                // never changes: trying again changes nothing.
                let retry = !matches!(
                    e,
                    InstallError::RestartOnly(_) | InstallError::Unguaranteed(_)
                );
                self.refused(Some(sha256), e.to_string(), report, retry)
                    .await;
            }
        }
    }

    async fn install(
        &mut self,
        config: Config,
        sha256: &str,
        shutdown: &CancellationToken,
    ) -> Result<usize, InstallError> {
        let restart_only = self.current.restart_only_changes(&config);
        if !restart_only.is_empty() {
            return Err(InstallError::RestartOnly(restart_only));
        }
        let previous = self.state.runtime();
        let runtime = Runtime::build(&config, &self.http, sha256.to_owned(), Some(&previous))
            .await
            .map_err(InstallError::Build)?;
        let step_functions = &self.state.step_functions;
        step_functions
            .guarantees
            .check(step_functions.client.as_ref(), runtime.workflows.values())
            .await?;
        let names: Vec<_> = runtime.workflows.keys().cloned().collect();
        crate::migrations::apply(&mut self.redis.clone(), &self.keys, &names).await?;
        let runtime = Arc::new(runtime);
        self.state.install(Arc::clone(&runtime));
        self.targets.send_replace(runtime.drain_targets());
        self.refreshers.follow(&runtime, shutdown);
        self.current = config;
        Ok(runtime.workflows.len())
    }

    /// Keeps the running configuration and remembers the refusal (to try it again after a
    /// growing pause when `retry`); records why, unless this is a retry refused for the same
    /// reason as the last (`report` false).
    async fn refused(&mut self, sha256: Option<String>, reason: String, report: bool, retry: bool) {
        let previous = self.refusal.take();
        let repeated = previous.as_ref().is_some_and(|p| p.reason == reason);
        let pause = previous.map_or(FIRST_RETRY, |p| (p.pause * 2).min(LONGEST_RETRY));
        self.refusal = Some(Refusal {
            reason: reason.clone(),
            retry_at: retry.then(|| Instant::now() + pause),
            pause,
        });
        if repeated && !report {
            return;
        }
        self.record_refusal(sha256, reason).await;
    }

    async fn record_refusal(&self, sha256: Option<String>, reason: String) {
        tracing::error!(config.sha256 = sha256.as_deref().unwrap_or("-"), %reason, "configuration reload refused; the running configuration stays");
        self.state
            .audit
            .record(AuditEvent::config_refused(sha256, reason))
            .await;
    }
}

/// Why a valid configuration could not be installed (the running one stays).
#[derive(Debug, thiserror::Error)]
enum InstallError {
    #[error("changes to [{}] need a restart", .0.join("], ["))]
    RestartOnly(Vec<&'static str>),
    #[error("{0:#}")]
    Build(anyhow::Error),
    #[error("cannot prepare the workflows' queues: {0}")]
    Migrations(#[from] crate::migrations::MigrationError),
    #[error(transparent)]
    Unguaranteed(#[from] crate::worker::guarantee::GuaranteeProblems),
}

/// SIGHUP as a stream of `()`; never yields where there is no such signal.
fn hangup_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
