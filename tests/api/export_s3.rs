//! The S3 sink on moto's S3: segments and checkpoints written as objects under Object Lock,
//! the trail verified over S3 then Redis, an altered or deleted object found; S3
//! unreachable or refusing holds the backlog at its cap and loses nothing. (Where the
//! exporter finds the end: `export_s3_locate.rs`.)

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::export_faults::trigger_until_refused;
use crate::support::{
    Proxy, RedisServer, TestApp, TestResult, create_locked_bucket, eventually, keys, partners,
    s3_client, spawn_app_with,
};

pub(crate) const PREFIX: &str = "prod/trail/";
const CAP: u64 = 150;

/// An app exporting to `bucket` (at `endpoint`, moto or a proxy in front of it).
async fn app_exporting_to(bucket: &str, endpoint: &str) -> TestResult<TestApp> {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("worker.enabled", false)
            .set("audit.s3.bucket", bucket)
            .set("audit.s3.prefix", PREFIX)
            .set("audit.s3.endpoint_url", endpoint)
            .set("audit.s3.object_lock_days", 1)
            .set("audit.s3.segment_records", 40)
            .set("audit.s3.segment_seconds", 1)
            .set("audit.files.max_unexported_records", CAP)
            .set("audit.files.redis_keep_records", 20)
            .set("audit.checkpoint_every", 10)
    })
    .await?;
    // The replica's first reading of the backlog arms the gate.
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(app)
}

pub(crate) async fn keys_under(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    under: &str,
) -> TestResult<Vec<String>> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{PREFIX}{under}"))
        .send()
        .await?;
    Ok(listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

/// Waits until the export cursor reaches the head (every record chained so far exported).
async fn exported_to_head(app: &TestApp) -> TestResult {
    if let Some(audit) = &app.audit {
        audit.flush().await?;
    }
    let redis = app.redis.connection().await?;
    eventually(
        Duration::from_secs(30),
        "the export to reach the head",
        || {
            let mut redis = redis.clone();
            async move {
                let (head, exported): (Option<u64>, Option<u64>) = redis::pipe()
                    .cmd("HGET")
                    .arg(keys().audit_head())
                    .arg("seq")
                    .cmd("HGET")
                    .arg(keys().audit_export())
                    .arg("seq")
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                (head.is_some() && head == exported).then_some(())
            }
        },
    )
    .await;
    Ok(())
}

/// `audit verify --json` over S3 then Redis (or S3 alone): exit code and report.
fn verify(app: &TestApp, bucket: &str, extra: &[&str]) -> TestResult<(i32, Value)> {
    let url = format!("s3://{bucket}/{PREFIX}");
    let mut args = vec!["audit", "verify", "--json", "--s3", &url];
    args.extend_from_slice(extra);
    let output = app.stepgate(&args)?;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Ok((output.status.code().unwrap_or(-1), report))
}

#[tokio::test]
async fn the_trail_goes_to_s3_under_object_lock_and_verifies_with_redis() -> TestResult {
    let s3 = s3_client().await;
    let bucket = create_locked_bucket(&s3).await?;
    let app = app_exporting_to(&bucket, &partners().sfn_endpoint).await?;
    let token = partners().idp.billing_token().await?;
    let trigger = |n| {
        let (app, token) = (&app, &token);
        async move {
            let response = app
                .trigger("orders", token, &json!({"input": {"n": n}}))
                .await?;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            TestResult::Ok(())
        }
    };
    for n in 0..30 {
        trigger(n).await?;
    }
    // A checkpoint saved now, whose records leave Redis below: `--since` holds the trail
    // in S3 and Redis to it.
    exported_to_head(&app).await?;
    let dir = tempfile::tempdir()?;
    let saved = dir.path().join("saved.json").display().to_string();
    let output = app.stepgate(&["audit", "checkpoint", "--out", &saved])?;
    assert!(output.status.success(), "{output:?}");
    for n in 30..100 {
        trigger(n).await?;
    }
    exported_to_head(&app).await?;

    let segments = keys_under(&s3, &bucket, "records/").await?;
    assert!(segments.len() >= 3, "{segments:?}");
    assert_eq!(
        segments[0],
        format!("{PREFIX}records/00000000000000000001.jsonl")
    );
    let checkpoints = keys_under(&s3, &bucket, "checkpoints/").await?;
    assert!(!checkpoints.is_empty(), "no checkpoint objects");
    // Every object under compliance-mode retention (moto has no GetObjectRetention; HEAD
    // tells): its version cannot be deleted.
    for key in segments.iter().chain(&checkpoints) {
        let head = s3.head_object().bucket(&bucket).key(key).send().await?;
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE"),
            "{key}"
        );
        assert!(head.object_lock_retain_until_date().is_some(), "{key}");
    }
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(&segments[0])
        .send()
        .await?;
    let version = head.version_id().unwrap_or_default().to_owned();
    let deleted = s3
        .delete_object()
        .bucket(&bucket)
        .key(&segments[0])
        .version_id(&version)
        .send()
        .await;
    assert!(deleted.is_err(), "a locked version was deleted");

    // Redis kept only its tail: the whole trail needs S3 then Redis.
    let redis = app.redis.connection().await?;
    eventually(Duration::from_secs(10), "Redis to be trimmed", || {
        let mut redis = redis.clone();
        async move {
            let start: Option<u64> = redis::cmd("HGET")
                .arg(keys().audit_trimmed())
                .arg("seq")
                .query_async(&mut redis)
                .await
                .ok()?;
            (start.unwrap_or(0) > 0).then_some(())
        }
    })
    .await;
    let (code, report) = verify(&app, &bucket, &[])?;
    assert_eq!(code, 0, "{report}");
    assert!(
        report["verified"]["records"].as_u64() >= Some(100),
        "{report}"
    );
    let (code, report) = verify(&app, &bucket, &["--no-redis"])?;
    assert_eq!(code, 0, "{report}");
    let (code, report) = verify(&app, &bucket, &["--since", &saved])?;
    assert_eq!(code, 0, "{report}");
    assert!(
        report["verified"]["consistent_with"].as_u64() > Some(0),
        "{report}"
    );

    // A segment rewritten (a new version on top, which Object Lock does not stop) is found…
    let original = s3
        .get_object()
        .bucket(&bucket)
        .key(&segments[1])
        .send()
        .await?;
    let text = String::from_utf8(original.body.collect().await?.into_bytes().to_vec())?;
    let altered = text.replacen("\"accepted\"", "\"denied\"", 1);
    assert_ne!(altered, text);
    let put = s3
        .put_object()
        .bucket(&bucket)
        .key(&segments[1])
        .body(ByteStream::from(altered.into_bytes()))
        .send()
        .await?;
    let (code, report) = verify(&app, &bucket, &[])?;
    assert_eq!(code, 1, "{report}");
    // …and once that version is gone, the original verifies again.
    s3.delete_object()
        .bucket(&bucket)
        .key(&segments[1])
        .version_id(put.version_id().unwrap_or_default())
        .send()
        .await?;
    assert_eq!(verify(&app, &bucket, &[])?.0, 0);
    // A segment deleted (a delete marker hides it) is found too: a gap in the sequence…
    let marker = s3
        .delete_object()
        .bucket(&bucket)
        .key(&segments[1])
        .send()
        .await?;
    let (code, report) = verify(&app, &bucket, &["--no-redis"])?;
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["problem"]["kind"], "sequence", "{report}");
    // …and, that one back (its delete marker removed), the last one too, although Redis'
    // tail still holds its records: the export cursor says the sink went that far.
    s3.delete_object()
        .bucket(&bucket)
        .key(&segments[1])
        .version_id(marker.version_id().unwrap_or_default())
        .send()
        .await?;
    assert_eq!(verify(&app, &bucket, &[])?.0, 0);
    let last = segments.last().ok_or("no segments")?;
    s3.delete_object().bucket(&bucket).key(last).send().await?;
    let (code, report) = verify(&app, &bucket, &[])?;
    assert_eq!(code, 4, "{report}");
    assert_eq!(report["problem"]["kind"], "truncated", "{report}");
    Ok(())
}

/// The accepted records in S3 and in Redis, by request id.
async fn accepted_in_trail(
    app: &TestApp,
    bucket: &str,
) -> TestResult<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    // Redis first (flushed: the last records may be on their way into the chain); whatever
    // is trimmed after this read is in S3 by then.
    for record in app.audit_records().await? {
        if record["event"] == "accepted" {
            ids.insert(record["request_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    let s3 = s3_client().await;
    for key in keys_under(&s3, bucket, "records/").await? {
        let object = s3.get_object().bucket(bucket).key(&key).send().await?;
        let text = String::from_utf8(object.body.collect().await?.into_bytes().to_vec())?;
        for line in text.lines() {
            let line: Value = serde_json::from_str(line)?;
            if line["record"]["event"] == "accepted" {
                ids.insert(
                    line["record"]["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    Ok(ids)
}

/// S3 fails behind `proxy` (`fail`), then recovers (`recover`): the backlog stops at its
/// cap, readiness names it, every accepted trigger's record is kept, admission resumes by
/// itself and the trail verifies over S3 then Redis.
async fn s3_fault_holds_the_cap(fail: impl Fn(&Proxy), recover: impl Fn(&Proxy)) -> TestResult {
    let s3 = s3_client().await;
    let bucket = create_locked_bucket(&s3).await?;
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    let app = app_exporting_to(&bucket, &proxy.url).await?;
    let token = partners().idp.billing_token().await?;
    // Some segments out first: the fault strikes an export under way.
    for n in 0..45 {
        let response = app
            .trigger("orders", &token, &json!({"input": {"n": n}}))
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    exported_to_head(&app).await?;
    fail(&proxy);
    let tried_before = proxy.connections();
    let accepted = trigger_until_refused(&app, &token).await?;
    // The exporter kept at it through the fault (it was not merely idle).
    eventually(
        Duration::from_secs(15),
        "the exporter to try S3",
        || async { (proxy.connections() > tried_before).then_some(()) },
    )
    .await;
    assert!(
        accepted.len() as u64 >= CAP / 3,
        "{} accepted",
        accepted.len()
    );
    // Not ready either: once the replica's readings (every 250 ms) count what its gate
    // estimated, triggers still arriving keep both shut.
    let accepted = std::sync::Mutex::new(accepted);
    let body: Value = eventually(Duration::from_secs(10), "readiness to fail", || async {
        let response = app
            .trigger("orders", &token, &json!({"input": {}}))
            .await
            .ok()?;
        if response.status() == StatusCode::ACCEPTED {
            let id = crate::support::request_id_of(response).await.ok()?;
            accepted.lock().ok()?.push(id);
        }
        let ready = app.http.get(app.url("/readyz")).send().await.ok()?;
        (ready.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())?;
        ready.json().await.ok()
    })
    .await;
    let accepted = accepted.into_inner().map_err(|_| "poisoned")?;
    assert!(
        body["checks"]["audit_export"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("(cap {CAP})")),
        "{body}"
    );
    let held = accepted_in_trail(&app, &bucket).await?;
    let lost: Vec<&String> = accepted.iter().filter(|id| !held.contains(*id)).collect();
    assert!(lost.is_empty(), "records lost while S3 failed: {lost:?}");

    recover(&proxy);
    eventually(Duration::from_secs(60), "admission to resume", || async {
        let response = app
            .trigger("orders", &token, &json!({"input": {}}))
            .await
            .ok()?;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    exported_to_head(&app).await?;
    let held = accepted_in_trail(&app, &bucket).await?;
    assert!(accepted.iter().all(|id| held.contains(id)), "records lost");
    let (code, report) = verify(&app, &bucket, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

// Multi-threaded: the proxy's tasks run on while `audit verify` blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_holds_the_backlog_at_its_cap_and_loses_nothing() -> TestResult {
    s3_fault_holds_the_cap(Proxy::down, Proxy::up).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refusing_with_403_holds_the_backlog_at_its_cap_and_loses_nothing() -> TestResult {
    let denied = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    let refusal = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\n\
         x-amz-request-id: test\r\ncontent-length: {}\r\n\r\n{denied}",
        denied.len()
    );
    s3_fault_holds_the_cap(
        move |proxy| proxy.answer_with(Some(refusal.clone())),
        |proxy| proxy.answer_with(None),
    )
    .await
}
