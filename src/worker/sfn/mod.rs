//! The seam to AWS Step Functions: one trait, the `aws-sdk-sfn` implementation, and a
//! scripted fake for unit tests of the drain's decisions (integration tests use moto).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;

use tokio::sync::Mutex;

use crate::config::AwsConfig;
use classify::{classify, classify_describe};

mod classify;
#[cfg(any(test, feature = "test-helpers"))]
pub mod fake;

/// How a Step Functions call failed, as far as the drain must know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfnError {
    /// `ExecutionAlreadyExists`: this name was used before (by us, or by someone else).
    #[error("an execution with this name already exists")]
    AlreadyExists,
    /// Step Functions is busy (throttling, quotas of open executions): slow down and retry.
    #[error("{0}")]
    Throttled(String),
    /// Worth trying again later, and certainly not done: the connection was refused, so
    /// nothing reached the service.
    #[error("{0}")]
    Retryable(String),
    /// Worth trying again later, but the call may have been done: a timeout or a connection
    /// lost once the request was sent, a 5xx. A retry of a start may start a second
    /// execution where names do not protect it (EXPRESS).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// stepgate's own side is broken (credentials missing or expired, request signing, clock
    /// skew, KMS throttling): every call fails alike until an operator or time mends it, and
    /// none of it is the request's fault. Retried and counted by the breaker; never
    /// dead-letters an entry, however long it lasts.
    #[error("{0}")]
    Systemic(String),
    /// Will fail the same way every time: missing state machine, access denied, bad input.
    #[error("{0}")]
    Terminal(String),
}

/// A state machine's type, which bounds the delivery guarantee stepgate can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMachineType {
    /// A second start of one execution name is refused: exactly once is possible.
    Standard,
    /// A second start of one name starts another execution.
    Express,
}

/// The Step Functions calls the drain makes, each as `role` (an IAM role ARN) when given,
/// else with the process's own credentials.
#[async_trait]
pub trait StepFunctions: Send + Sync {
    /// The state machine's type (`DescribeStateMachine`).
    async fn state_machine_type(
        &self,
        role: Option<&str>,
        state_machine_arn: &str,
    ) -> Result<StateMachineType, SfnError>;

    /// Starts an execution named `name`, in the caller's X-Ray trace when `trace_header`
    /// is given; returns its ARN.
    async fn start_execution(
        &self,
        role: Option<&str>,
        state_machine_arn: &str,
        name: &str,
        input: &str,
        trace_header: Option<&str>,
    ) -> Result<String, SfnError>;

    /// The input an existing execution was started with.
    async fn execution_input(
        &self,
        role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError>;

    /// An execution's state now: `RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`,
    /// `PENDING_REDRIVE`.
    async fn execution_status(
        &self,
        role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError>;

    /// Why no AWS credentials can be had now, in one line; `None` when they resolve.
    async fn credentials_problem(&self) -> Option<String> {
        None
    }
}

/// Bound on resolving credentials for the start-up and readiness check (the default chain
/// may ask the instance metadata service, which is slow to fail off EC2).
const CREDENTIALS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The ARN of execution `name` of `state_machine_arn` (what `StartExecution` would return).
pub fn execution_arn(state_machine_arn: &str, name: &str) -> String {
    format!(
        "{}:{name}",
        state_machine_arn.replacen(":stateMachine:", ":execution:", 1)
    )
}

/// Step Functions through `aws-sdk-sfn`: one client with the process's credentials, and one
/// per workflow role, made on first use.
pub struct AwsStepFunctions {
    shared: SdkConfig,
    call_timeout: Duration,
    own: aws_sdk_sfn::Client,
    by_role: Mutex<HashMap<String, aws_sdk_sfn::Client>>,
}

/// Shown in CloudTrail as the session of every assumed role.
const ROLE_SESSION_NAME: &str = "stepgate";

impl AwsStepFunctions {
    /// Clients for `aws`, each call bounded by `call_timeout`. The SDK's own retries are
    /// off: the drain owns the retry schedule, so a failing call never blocks a slot longer
    /// than the configured bound and work is never dropped after "3 attempts".
    pub async fn new(aws: &AwsConfig, call_timeout: Duration) -> Self {
        let shared = crate::aws_sdk::sdk_config(aws).await;
        let own = client(&shared, call_timeout, None);
        Self {
            shared,
            call_timeout,
            own,
            by_role: Mutex::default(),
        }
    }

    /// The client that acts as `role`. A role's client assumes it through STS with the
    /// process's credentials; the client's identity cache keeps the assumed credentials and
    /// refreshes them before they expire.
    async fn client(&self, role: Option<&str>) -> aws_sdk_sfn::Client {
        let Some(role) = role else {
            return self.own.clone();
        };
        let mut by_role = self.by_role.lock().await;
        if let Some(client) = by_role.get(role) {
            return client.clone();
        }
        let assume = AssumeRoleProvider::builder(role)
            .configure(&self.shared)
            .session_name(ROLE_SESSION_NAME)
            .build()
            .await;
        let client = client(&self.shared, self.call_timeout, Some(assume));
        by_role.insert(role.to_owned(), client.clone());
        client
    }
}

fn client(
    shared: &SdkConfig,
    call_timeout: Duration,
    role: Option<AssumeRoleProvider>,
) -> aws_sdk_sfn::Client {
    let mut config = aws_sdk_sfn::config::Builder::from(shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(call_timeout.min(Duration::from_secs(3)))
                .operation_timeout(call_timeout)
                .build(),
        );
    if let Some(role) = role {
        config = config.credentials_provider(role);
    }
    aws_sdk_sfn::Client::from_conf(config.build())
}

#[async_trait]
impl StepFunctions for AwsStepFunctions {
    async fn state_machine_type(
        &self,
        role: Option<&str>,
        state_machine_arn: &str,
    ) -> Result<StateMachineType, SfnError> {
        use aws_sdk_sfn::types::StateMachineType as Type;
        let client = self.client(role).await;
        let started = std::time::Instant::now();
        let reply = client
            .describe_state_machine()
            .state_machine_arn(state_machine_arn)
            .send()
            .await
            .map_err(classify_describe);
        record_call("DescribeStateMachine", &reply, started.elapsed());
        match reply?.r#type {
            Type::Standard => Ok(StateMachineType::Standard),
            Type::Express => Ok(StateMachineType::Express),
            other => Err(SfnError::Terminal(format!(
                "unknown state machine type {}",
                other.as_str()
            ))),
        }
    }

    async fn start_execution(
        &self,
        role: Option<&str>,
        state_machine_arn: &str,
        name: &str,
        input: &str,
        trace_header: Option<&str>,
    ) -> Result<String, SfnError> {
        let client = self.client(role).await;
        let started = std::time::Instant::now();
        let reply = client
            .start_execution()
            .state_machine_arn(state_machine_arn)
            .name(name)
            .input(input)
            .set_trace_header(trace_header.map(str::to_owned))
            .send()
            .await
            .map_err(classify);
        record_call("StartExecution", &reply, started.elapsed());
        Ok(reply?.execution_arn)
    }

    async fn execution_input(
        &self,
        role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError> {
        self.describe(role, execution_arn)
            .await?
            .input
            .ok_or_else(|| SfnError::Terminal("the execution's input is not readable".into()))
    }

    async fn execution_status(
        &self,
        role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError> {
        let reply = self.describe(role, execution_arn).await?;
        Ok(reply.status.as_str().to_owned())
    }

    async fn credentials_problem(&self) -> Option<String> {
        use aws_sdk_sfn::config::ProvideCredentials;
        let Some(provider) = self.shared.credentials_provider() else {
            return Some("no AWS credentials provider is configured".into());
        };
        match tokio::time::timeout(CREDENTIALS_CHECK_TIMEOUT, provider.provide_credentials()).await
        {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                // The innermost cause says what is missing; the layers above repeat it.
                let cause =
                    std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                Some(format!(
                    "no AWS credentials can be resolved ({}); set [aws.static_credentials], the \
                     AWS_* environment variables, a profile or a role",
                    first_line(&cause)
                ))
            }
            Err(_) => Some(format!(
                "resolving AWS credentials took longer than {} s",
                CREDENTIALS_CHECK_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The first line of `text`, at most 300 bytes: one clear log line, whatever the SDK says.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

impl AwsStepFunctions {
    async fn describe(
        &self,
        role: Option<&str>,
        execution_arn: &str,
    ) -> Result<aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput, SfnError> {
        let client = self.client(role).await;
        let started = std::time::Instant::now();
        let reply = client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(classify);
        record_call("DescribeExecution", &reply, started.elapsed());
        reply
    }
}

fn record_call<T>(operation: &'static str, reply: &Result<T, SfnError>, took: Duration) {
    let outcome = match reply {
        Ok(_) => "ok",
        Err(SfnError::AlreadyExists) => "already_exists",
        Err(SfnError::Throttled(_)) => "throttled",
        Err(SfnError::Retryable(_)) => "retryable",
        Err(SfnError::OutcomeUnknown(_)) => "outcome_unknown",
        Err(SfnError::Systemic(_)) => "systemic",
        Err(SfnError::Terminal(_)) => "terminal",
    };
    crate::metrics::metrics().sfn_call(operation, outcome, took);
}
