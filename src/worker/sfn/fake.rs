//! A scripted Step Functions for unit tests: answers are popped in order, calls recorded.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start { name: String, input: String },
    Describe { execution_arn: String },
}

/// Every state machine it knows is STANDARD unless made [`FakeStepFunctions::express`].
#[derive(Default)]
pub struct FakeStepFunctions {
    answers: Mutex<VecDeque<Result<String, SfnError>>>,
    calls: Mutex<Vec<Call>>,
    express: bool,
}

impl FakeStepFunctions {
    /// A fake that gives `answers` to successive calls (then `Terminal("unscripted")`).
    pub fn scripted(answers: impl IntoIterator<Item = Result<String, SfnError>>) -> Self {
        Self {
            answers: Mutex::new(answers.into_iter().collect()),
            calls: Mutex::default(),
            express: false,
        }
    }

    /// The same fake, whose state machines are EXPRESS.
    pub fn express(self) -> Self {
        Self {
            express: true,
            ..self
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn answer(&self, call: Call) -> Result<String, SfnError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
        let next = self.answers.lock().ok().and_then(|mut a| a.pop_front());
        next.unwrap_or_else(|| Err(SfnError::Terminal("unscripted call".into())))
    }
}

#[async_trait]
impl StepFunctions for FakeStepFunctions {
    async fn state_machine_type(
        &self,
        _role: Option<&str>,
        _arn: &str,
    ) -> Result<StateMachineType, SfnError> {
        Ok(if self.express {
            StateMachineType::Express
        } else {
            StateMachineType::Standard
        })
    }

    async fn start_execution(
        &self,
        _role: Option<&str>,
        _arn: &str,
        name: &str,
        input: &str,
        _trace_header: Option<&str>,
    ) -> Result<String, SfnError> {
        self.answer(Call::Start {
            name: name.into(),
            input: input.into(),
        })
    }

    async fn execution_input(
        &self,
        _role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError> {
        self.answer(Call::Describe {
            execution_arn: execution_arn.into(),
        })
    }

    async fn execution_status(
        &self,
        _role: Option<&str>,
        execution_arn: &str,
    ) -> Result<String, SfnError> {
        self.answer(Call::Describe {
            execution_arn: execution_arn.into(),
        })
    }
}
