//! Each workflow's delivery guarantee: what its state machine's type allows, and what its
//! configuration accepts.
//!
//! Exactly once rests on execution names: the name is the request id, and a STANDARD state
//! machine refuses a second start of a name. An EXPRESS one starts another execution instead
//! (AWS documents async Express as at least once), so an EXPRESS workflow gets only what it
//! declares in `delivery`: `at_least_once` (a start whose outcome is unknown is retried) or
//! `at_most_once` (it is not: the request ends `failed`, `outcome_unknown`). Types are asked
//! of Step Functions (`DescribeStateMachine`) and kept per process: a type never changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sfn::{SfnError, StateMachineType, StepFunctions};
use crate::config::{DeliveryGuarantee, Workflow};

/// How long start-up and reload wait for the types before leaving them to the drain.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A workflow whose state machine cannot give the guarantee its configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "workflows.{workflow}: the state machine is EXPRESS, which cannot start exactly once (a second \
     start of a name starts a second execution); set workflows.{workflow}.delivery to \
     \"at_least_once\" (retried, duplicates possible) or \"at_most_once\" (never retried once \
     its outcome is unknown)"
)]
pub struct Unguaranteed {
    pub workflow: String,
}

/// Every workflow refused at once, as a configuration error lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct GuaranteeProblems(pub Vec<Unguaranteed>);

/// The guarantee `workflow` gets on a state machine of type `kind`.
pub fn guarantee(
    kind: StateMachineType,
    workflow: &Workflow,
) -> Result<DeliveryGuarantee, Unguaranteed> {
    match (kind, workflow.delivery) {
        (StateMachineType::Standard, _) => Ok(DeliveryGuarantee::ExactlyOnce),
        (
            StateMachineType::Express,
            Some(accepted @ (DeliveryGuarantee::AtLeastOnce | DeliveryGuarantee::AtMostOnce)),
        ) => Ok(accepted),
        (StateMachineType::Express, _) => Err(Unguaranteed {
            workflow: workflow.name.to_string(),
        }),
    }
}

/// The state machines' types as learned so far, by ARN; shared by start-up, reload, the
/// drain and the API.
#[derive(Default)]
pub struct Guarantees {
    types: Mutex<HashMap<String, StateMachineType>>,
}

impl Guarantees {
    /// The type of `workflow`'s state machine, if known.
    pub fn known(&self, workflow: &Workflow) -> Option<StateMachineType> {
        self.types
            .lock()
            .ok()
            .and_then(|types| types.get(&workflow.state_machine_arn).copied())
    }

    /// The guarantee `workflow` gets, if its type is known; `Some(Err)` if it gets none.
    pub fn of(&self, workflow: &Workflow) -> Option<Result<DeliveryGuarantee, Unguaranteed>> {
        self.known(workflow).map(|kind| guarantee(kind, workflow))
    }

    /// The type of `workflow`'s state machine: known, or asked (with its role) and kept.
    pub async fn learn(
        &self,
        sfn: &dyn StepFunctions,
        workflow: &Workflow,
    ) -> Result<StateMachineType, SfnError> {
        match self.known(workflow) {
            Some(kind) => Ok(kind),
            None => self.ask(sfn, workflow).await,
        }
    }

    /// Asks Step Functions (with the workflow's role) for the type, and keeps the answer:
    /// always one call, so the caller can judge the service by its answer.
    pub async fn ask(
        &self,
        sfn: &dyn StepFunctions,
        workflow: &Workflow,
    ) -> Result<StateMachineType, SfnError> {
        let role = workflow.role_arn.as_deref();
        let kind = sfn
            .state_machine_type(role, &workflow.state_machine_arn)
            .await?;
        if let Ok(mut types) = self.types.lock() {
            types.insert(workflow.state_machine_arn.clone(), kind);
        }
        Ok(kind)
    }

    /// Learns every workflow's type it can within [`CHECK_TIMEOUT`] and refuses those that
    /// cannot get a guarantee. A type that cannot be learned now (Step Functions
    /// unreachable) is left to the drain, which learns it before the first start.
    pub async fn check(
        &self,
        sfn: &dyn StepFunctions,
        workflows: impl IntoIterator<Item = &Arc<Workflow>>,
    ) -> Result<(), GuaranteeProblems> {
        let asks = workflows.into_iter().map(|workflow| async move {
            let learned = tokio::time::timeout(CHECK_TIMEOUT, self.learn(sfn, workflow)).await;
            match learned {
                Ok(Ok(kind)) => guarantee(kind, workflow).err(),
                Ok(Err(e)) => {
                    tracing::warn!(workflow = %workflow.name, error = %e, "cannot learn the state machine's type now; the drain asks again before the first start");
                    None
                }
                Err(_) => {
                    tracing::warn!(workflow = %workflow.name, "DescribeStateMachine did not answer in time; the drain asks again before the first start");
                    None
                }
            }
        });
        let problems: Vec<_> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(GuaranteeProblems(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::sfn::fake::FakeStepFunctions;

    fn workflow(delivery: Option<DeliveryGuarantee>) -> Workflow {
        Workflow {
            delivery,
            ..crate::worker::delivery::tests::target()
        }
    }

    #[test]
    fn standard_is_exactly_once_and_express_only_what_it_declares() {
        use DeliveryGuarantee::*;
        use StateMachineType::*;
        for declared in [None, Some(ExactlyOnce), Some(AtLeastOnce), Some(AtMostOnce)] {
            assert_eq!(guarantee(Standard, &workflow(declared)), Ok(ExactlyOnce));
        }
        assert_eq!(
            guarantee(Express, &workflow(Some(AtLeastOnce))),
            Ok(AtLeastOnce)
        );
        assert_eq!(
            guarantee(Express, &workflow(Some(AtMostOnce))),
            Ok(AtMostOnce)
        );
        for declared in [None, Some(ExactlyOnce)] {
            let refused = guarantee(Express, &workflow(declared));
            assert!(
                refused.is_err_and(|e| e.to_string().contains("workflows.orders.delivery")),
                "{declared:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_check_names_every_express_workflow_without_a_guarantee() {
        let guarantees = Guarantees::default();
        let sfn = FakeStepFunctions::scripted([]).express();
        let undeclared = Arc::new(workflow(None));
        let refused = guarantees.check(&sfn, [&undeclared]).await;
        assert!(refused.is_err_and(|e| e.0.len() == 1));
        assert_eq!(
            guarantees.of(&undeclared).map(|g| g.is_err()),
            Some(true),
            "the type is kept"
        );
        let declared = Arc::new(workflow(Some(DeliveryGuarantee::AtMostOnce)));
        assert!(guarantees.check(&sfn, [&declared]).await.is_ok());
    }
}
