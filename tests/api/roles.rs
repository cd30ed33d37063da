//! Least privilege per workflow: a workflow with `role_arn` starts its executions with
//! credentials of that role, assumed through STS (moto's) once and then cached.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Proxy, RedisServer, TestResult, partners, request_id_of, spawn_app_with};

/// `(execution name, signing access key id)` of each StartExecution request in `sent`.
fn start_requests(sent: &str) -> Vec<(String, String)> {
    sent.split("POST / HTTP/1.1")
        .filter(|request| {
            request
                .to_ascii_lowercase()
                .contains("x-amz-target: awsstepfunctions.startexecution")
        })
        .filter_map(|request| {
            let key = request.split("Credential=").nth(1)?.split('/').next()?;
            let name = request.split("\"name\":\"").nth(1)?.split('"').next()?;
            Some((name.to_owned(), key.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn a_workflow_with_a_role_starts_its_executions_as_that_role() -> TestResult {
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let app = spawn_app_with(RedisServer::start(), |config| {
        let arn = config.orders_arn();
        config
            .set("aws.endpoint_url", proxy.url.clone())
            .workflow("refunds", &arn)
            .set(
                "workflows.refunds.role_arn",
                "arn:aws:iam::123456789012:role/stepgate-refunds",
            )
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let mut ids = vec![app.accept(&token, &json!({"order": 1})).await?];
    for n in 0..3 {
        let response = app
            .trigger("refunds", &token, &json!({"input": {"refund": n}}))
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(request_id_of(response).await?);
    }
    for id in &ids {
        let status = app.settled_status(id, &token).await;
        assert_eq!(status["status"], "started", "{status}");
    }

    let sent = proxy.sent();
    assert_eq!(
        sent.matches("Action=AssumeRole").count(),
        1,
        "the role is assumed once, its credentials cached"
    );
    assert!(sent.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fstepgate-refunds"));
    assert!(sent.contains("RoleSessionName=stepgate"));

    let starts = start_requests(&sent);
    assert_eq!(starts.len(), 4, "{starts:?}");
    for (name, key) in &starts {
        if name.starts_with("orders_") {
            assert_eq!(
                key, "test",
                "orders runs with the process's own credentials"
            );
        } else {
            assert!(name.starts_with("refunds_"), "{name}");
            assert_ne!(
                key, "test",
                "refunds runs with the assumed role's credentials"
            );
            assert!(!key.is_empty());
        }
    }
    let role_keys: std::collections::HashSet<_> = starts
        .iter()
        .filter(|(name, _)| name.starts_with("refunds_"))
        .map(|(_, key)| key)
        .collect();
    assert_eq!(role_keys.len(), 1, "one set of assumed credentials");
    Ok(())
}
