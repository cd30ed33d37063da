//! What request handlers share.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::redis_conn::RedisConnection;

use crate::audit::AuditLog;
use crate::queue::{Keys, Producer};
use crate::runtime::Runtime;
use crate::worker::Breakers;

/// The application state behind every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// What the API holds of the drain's Step Functions side.
pub struct StepFunctionsView {
    pub client: Arc<dyn crate::worker::sfn::StepFunctions>,
    pub breakers: Arc<Breakers>,
    /// The workflows' delivery guarantees, as far as their state machines' types are known.
    pub guarantees: Arc<crate::worker::Guarantees>,
    /// Why AWS credentials cannot be resolved, as last checked; `None` when they can.
    pub credentials_problem: RwLock<Option<String>>,
}

pub struct App {
    /// Issuers and workflows: replaced whole by a configuration reload.
    runtime: RwLock<Arc<Runtime>>,
    pub producer: Producer,
    /// Multiplexed; never used for blocking commands.
    pub redis: RedisConnection,
    pub keys: Keys,
    pub audit: AuditLog,
    pub max_body_bytes: usize,
    pub idempotency_ttl: std::time::Duration,
    /// Step Functions as the API sees it: the drain's breakers (for `/readyz`) and a
    /// client for started requests' live state.
    pub step_functions: StepFunctionsView,
    pub live_status_ttl: crate::live_status::LiveStatusTtl,
    /// `audit.fail_closed`: how long admission waits for a trigger's record to be written.
    pub audit_fail_closed: Option<std::time::Duration>,
    /// False once shutdown began: readiness fails and triggers are refused.
    admitting: AtomicBool,
    /// How far the audit export is behind; at its cap, triggers are refused.
    pub export_backlog: Arc<crate::audit::export_backlog::ExportBacklog>,
}

impl App {
    pub fn new(
        runtime: Arc<Runtime>,
        producer: Producer,
        redis: RedisConnection,
        keys: Keys,
        audit: AuditLog,
        step_functions: StepFunctionsView,
        server: &crate::config::ServerConfig,
    ) -> Self {
        Self {
            runtime: RwLock::new(runtime),
            producer,
            redis,
            keys,
            audit,
            max_body_bytes: server.max_body_bytes,
            idempotency_ttl: server.idempotency_ttl,
            step_functions,
            live_status_ttl: crate::live_status::LiveStatusTtl {
                changing: server.live_status_ttl,
                ended: server.finished_status_ttl(),
            },
            audit_fail_closed: None,
            admitting: AtomicBool::new(true),
            export_backlog: Arc::default(),
        }
    }

    /// Triggers are refused unless their audit record is written within `deadline`.
    pub fn failing_closed(mut self, deadline: Option<std::time::Duration>) -> Self {
        self.audit_fail_closed = deadline;
        self
    }

    /// The current issuers and workflows; a request uses one snapshot throughout.
    pub fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether new triggers are admitted (false once shutdown began).
    pub fn is_admitting(&self) -> bool {
        self.admitting.load(Ordering::Relaxed)
    }

    /// Shutdown began: refuse new triggers, report not ready.
    pub fn stop_admitting(&self) {
        self.admitting.store(false, Ordering::Relaxed);
    }

    /// Installs a new configuration's issuers and workflows, atomically for requests.
    pub fn install(&self, runtime: Arc<Runtime>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = runtime;
    }
}

impl AppState {
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}
