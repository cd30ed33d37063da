//! What request handlers share.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::audit::AuditLog;
use crate::auth::Verifier;
use crate::domain::WorkflowName;
use crate::policy::{InputRules, Policy};
use crate::queue::{Keys, Producer};

/// A workflow as the request path needs it.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub state_machine_arn: String,
    pub policy: Policy,
    pub input: InputRules,
    pub one_time_tokens: bool,
}

/// The application state behind every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    pub verifier: Verifier,
    pub workflows: HashMap<WorkflowName, Workflow>,
    pub producer: Producer,
    /// Multiplexed; never used for blocking commands.
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub audit: AuditLog,
    pub max_body_bytes: usize,
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
