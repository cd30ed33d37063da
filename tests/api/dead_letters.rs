//! Dead letters: requests that can never start as they are wait, with their reason, until an
//! operator replays them (same request id: never a second execution) or purges them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use stepgate::testing::TestConfig;

use crate::support::{
    RedisServer, TestApp, TestResult, create_named_state_machine, eventually, executions, header,
    partners, request_id_of, spawn_app_with, state_machine_arn, unique_name,
};

/// A workflow `refunds` whose state machine does not exist (yet): its starts are refused
/// for good, with `StateMachineDoesNotExist`.
pub(crate) fn missing_state_machine() -> (String, impl FnOnce(TestConfig) -> TestConfig) {
    let name = unique_name("refunds");
    let arn = state_machine_arn(&name);
    (name, move |config: TestConfig| {
        config.workflow("refunds", &arn)
    })
}

/// billing-service may use the admin API.
pub(crate) fn billing_is_admin(config: TestConfig) -> TestConfig {
    config.push("admin.allow", json!({"clients": ["billing-service"]}))
}

async fn trigger_refund(app: &TestApp, token: &str, input: &Value) -> TestResult<String> {
    let response = app
        .trigger("refunds", token, &json!({ "input": input }))
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    request_id_of(response).await
}

fn dead_letters_via_cli(app: &TestApp) -> TestResult<Vec<Value>> {
    let out = app.stepgate(&["dlq", "list", "--workflow", "refunds", "--json"])?;
    assert!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn a_request_that_cannot_start_is_dead_lettered_and_a_replay_starts_it_once() -> TestResult {
    let (name, refunds) = missing_state_machine();
    let app = spawn_app_with(RedisServer::start(), refunds).await?;
    let token = partners().idp.billing_token().await?;
    let request_id = trigger_refund(&app, &token, &json!({"refund": 7})).await?;

    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    let reason = status["error"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("StateMachineDoesNotExist"), "{status}");
    assert_eq!(app.queue_len("refunds").await?, 0, "out of the queue");

    let listed = dead_letters_via_cli(&app)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], request_id.as_str());
    assert_eq!(listed[0]["reason"], reason.as_str());
    assert_eq!(listed[0]["input"], r#"{"refund":7}"#);
    let records = app.decision_records().await?;
    assert!(
        records.iter().any(|r| r["event"] == "dead_lettered"
            && r["request_id"] == request_id.as_str()
            && r["reason"] == reason.as_str()),
        "{records:?}"
    );

    // Once the state machine exists, a replay starts the request, under its own id.
    let arn = create_named_state_machine(&app.sfn, &name).await?;
    let out = app.stepgate(&["dlq", "replay", "--workflow", "refunds", &request_id])?;
    assert!(out.status.success(), "{out:?}");
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "started", "{status}");
    let started = executions(&app.sfn, &arn).await?;
    assert_eq!(started.len(), 1);
    assert!(
        started[0].0.ends_with(&format!(":{request_id}")),
        "{started:?}"
    );
    assert_eq!(started[0].1, r#"{"refund":7}"#);
    assert!(dead_letters_via_cli(&app)?.is_empty());

    // A second replay finds nothing to replay and starts nothing.
    let again = app.stepgate(&["dlq", "replay", "--workflow", "refunds", &request_id])?;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such dead letter"));
    // A negative: give a wrongly queued entry the time the drain takes to start one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(executions(&app.sfn, &arn).await?.len(), 1);

    let events: Vec<_> = app
        .decision_records()
        .await?
        .into_iter()
        .filter(|r| r["request_id"] == request_id.as_str())
        .map(|r| r["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, ["accepted", "dead_lettered", "replayed", "started"]);
    Ok(())
}

#[tokio::test]
async fn admins_page_replay_and_purge_dead_letters_through_the_api() -> TestResult {
    let (_, refunds) = missing_state_machine();
    let app = spawn_app_with(RedisServer::start(), |config| {
        billing_is_admin(refunds(config))
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let first = trigger_refund(&app, &token, &json!({"n": 1})).await?;
    let second = trigger_refund(&app, &token, &json!({"n": 2})).await?;
    for id in [&first, &second] {
        assert_eq!(
            app.settled_status(id, &token).await["status"],
            "dead_lettered"
        );
    }
    let list = |query: &'static str, token: String| {
        let url = app.url(&format!("/v1/admin/workflows/refunds/dead-letters{query}"));
        let http = app.http.clone();
        async move { http.get(url).bearer_auth(token).send().await }
    };

    // Not an admin: refused, and the refusal is audited.
    let outsider = partners().idp.denied_token().await?;
    let refused = list("", outsider).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(header(&refused, "www-authenticate").contains("insufficient_scope"));
    assert!(
        app.reasons("denied")
            .await?
            .iter()
            .any(|r| r.starts_with("admin API"))
    );

    // Pages of one.
    let page: Value = list("?limit=1", token.clone()).await?.json().await?;
    assert_eq!(page["total"], 2);
    // Dead-lettered in whatever order the two deliveries finished.
    let on_first_page = page["dead_letters"][0]["id"].clone();
    let after = page["next_after"]
        .as_str()
        .ok_or("no next_after")?
        .to_owned();
    let url = app.url(&format!(
        "/v1/admin/workflows/refunds/dead-letters?limit=1&after={after}"
    ));
    let page: Value = app
        .http
        .get(url)
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let mut both = vec![on_first_page, page["dead_letters"][0]["id"].clone()];
    both.sort_by_key(ToString::to_string);
    let mut expected = vec![json!(first), json!(second)];
    expected.sort_by_key(ToString::to_string);
    assert_eq!(both, expected, "two pages of one");
    let bad = list("?after=not-an-id", token.clone()).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&bad, "content-type"), "application/problem+json");
    let bad = list("?limit=many", token.clone()).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Purge: gone for good, the request failed.
    let purge_url = app.url(&format!("/v1/admin/workflows/refunds/dead-letters/{first}"));
    let purged = app
        .http
        .delete(&purge_url)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(purged.status(), StatusCode::NO_CONTENT);
    let status: Value = app.request_status(&first, &token).await?.json().await?;
    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("purged")
    );
    let again = app
        .http
        .delete(&purge_url)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    // Replay while the state machine is still missing: back in the queue under the same
    // id, and dead-lettered again.
    let replay_url = app.url(&format!(
        "/v1/admin/workflows/refunds/dead-letters/{second}/replay"
    ));
    let replayed = app
        .http
        .post(&replay_url)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(replayed.status(), StatusCode::OK);
    let body: Value = replayed.json().await?;
    assert_eq!(body["id"], second.as_str());
    eventually(
        Duration::from_secs(10),
        "the replay to be dead-lettered again",
        || async {
            let page: Value = list("", token.clone()).await.ok()?.json().await.ok()?;
            (page["total"] == 1 && page["dead_letters"][0]["id"] == second.as_str()).then_some(())
        },
    )
    .await;

    let records = app.decision_records().await?;
    let by_admin = |event: &str, id: &str| {
        records.iter().any(|r| {
            r["event"] == event && r["request_id"] == id && r["client_id"] == "billing-service"
        })
    };
    assert!(by_admin("failed", &first), "purge audited: {records:?}");
    assert!(by_admin("replayed", &second), "replay audited: {records:?}");
    Ok(())
}

#[tokio::test]
async fn a_request_still_failing_past_the_retry_age_is_dead_lettered() -> TestResult {
    // Nothing listens there: every call fails to connect (retryable).
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("aws.endpoint_url", closed)
            .set_seconds("worker.retry_max_age_seconds", Duration::from_secs(1))
            .set("worker.breaker.failure_threshold", 1000)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let request_id = app.accept(&token, &json!({"late": true})).await?;
    let status = app.settled_status(&request_id, &token).await;
    assert_eq!(status["status"], "dead_lettered", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("retry_max_age_seconds = 1"), "{status}");
    Ok(())
}

/// Dead letters wait too: they count toward `max_backlog`, so a workflow whose every
/// trigger dead-letters fills Redis only up to its bound, then refuses (503) until an
/// operator replays or purges. (Before, dead letters were bounded by nothing.)
#[tokio::test]
async fn dead_letters_count_toward_the_backlog() -> TestResult {
    let (_, refunds) = missing_state_machine();
    let app = spawn_app_with(RedisServer::start(), |config| {
        refunds(config).set("workflows.refunds.max_backlog", 2)
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    for n in 0..2 {
        let id = trigger_refund(&app, &token, &json!({"refund": n})).await?;
        let status = app.settled_status(&id, &token).await;
        assert_eq!(status["status"], "dead_lettered", "{status}");
    }
    assert_eq!(
        app.queue_len("refunds").await?,
        0,
        "nothing queued, two dead letters"
    );
    let refused = app
        .trigger("refunds", &token, &json!({"input": {"refund": 3}}))
        .await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!header(&refused, "retry-after").is_empty());
    Ok(())
}
