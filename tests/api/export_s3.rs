//! The S3 sink on moto's S3: segments and checkpoints written as objects under Object Lock,
//! the trail verified over S3 then Redis, an altered or deleted object found; S3
//! unreachable or refusing holds the backlog at its cap and loses nothing; a segment
//! written just before a crash is taken as written, not written twice.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::export_faults::trigger_until_refused;
use crate::support::{
    Proxy, RedisServer, TestApp, TestResult, create_locked_bucket, eventually, keys, partners,
    s3_client, spawn_app_with,
};

const PREFIX: &str = "prod/trail/";
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

async fn keys_under(s3: &aws_sdk_s3::Client, bucket: &str, under: &str) -> TestResult<Vec<String>> {
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
    // A segment deleted (a delete marker hides it) is found too.
    s3.delete_object()
        .bucket(&bucket)
        .key(&segments[1])
        .send()
        .await?;
    let (code, report) = verify(&app, &bucket, &["--no-redis"])?;
    assert_ne!(code, 0, "{report}");
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
    fail(&proxy);
    let accepted = trigger_until_refused(&app, &token).await?;
    assert!(
        accepted.len() as u64 >= CAP / 3,
        "{} accepted",
        accepted.len()
    );
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await?;
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

/// A segment written just before a crash (the cursor in Redis not moved yet) is taken as
/// written: the next exporter goes on after it, and no record lands in two objects.
#[tokio::test]
async fn a_segment_written_just_before_a_crash_is_taken_as_written() -> TestResult {
    use stepgate::audit::export::{ExportSettings, Exporter, S3Settings, SinkSettings};
    use stepgate::audit::s3::{S3Location, TrailBucket};
    let server = RedisServer::start();
    let mut raw = server.connection().await?;
    let body = |seq: u64| format!("{{\"seq\":{seq},\"tag\":\"a\"}}");
    let mut pipe = redis::pipe();
    for seq in 1..=30 {
        pipe.cmd("XADD")
            .arg(keys().audit_log())
            .arg("*")
            .arg("body")
            .arg(body(seq))
            .arg("sig")
            .arg("")
            .ignore();
    }
    pipe.cmd("HSET")
        .arg(keys().audit_head())
        .arg("seq")
        .arg(30)
        .ignore();
    let () = pipe.query_async(&mut raw).await?;

    let s3 = s3_client().await;
    let bucket = create_locked_bucket(&s3).await?;
    let crashed: Vec<u8> = (1..=12)
        .flat_map(|seq| stepgate::audit::files::record_line(&body(seq), "").unwrap_or_default())
        .collect();
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000001.jsonl"))
        .body(ByteStream::from(crashed))
        .send()
        .await?;

    let aws: stepgate::config::AwsConfig = serde_json::from_value(json!({
        "region": "us-east-1",
        "endpoint_url": partners().sfn_endpoint,
        "static_credentials": {"access_key_id": "test", "secret_access_key": "test"},
    }))?;
    let location = S3Location {
        bucket: bucket.clone(),
        prefix: PREFIX.to_owned(),
    };
    let settings = ExportSettings {
        sink: SinkSettings::S3(S3Settings {
            bucket: TrailBucket::connect(Some(&aws), None, location).await,
            object_lock_days: None,
            segment_records: 100,
            segment_age: Duration::ZERO,
        }),
        keep_records: 0,
    };
    let endpoint =
        stepgate::redis_conn::RedisEndpoint::Standalone(redis::Client::open(server.url())?);
    let redis = endpoint.connect(Duration::from_secs(5)).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let exporter = tokio::spawn(Exporter::new(redis, keys(), settings).run(shutdown.clone()));
    eventually(
        Duration::from_secs(20),
        "the export to reach record 30",
        || {
            let mut raw = raw.clone();
            async move {
                let exported: Option<u64> = redis::cmd("HGET")
                    .arg(keys().audit_export())
                    .arg("seq")
                    .query_async(&mut raw)
                    .await
                    .ok()?;
                (exported == Some(30)).then_some(())
            }
        },
    )
    .await;
    shutdown.cancel();
    exporter.await?;
    assert_eq!(
        keys_under(&s3, &bucket, "records/").await?,
        vec![
            format!("{PREFIX}records/00000000000000000001.jsonl"),
            format!("{PREFIX}records/00000000000000000013.jsonl"),
        ]
    );
    let second = s3
        .get_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000013.jsonl"))
        .send()
        .await?;
    let text = String::from_utf8(second.body.collect().await?.into_bytes().to_vec())?;
    assert_eq!(text.lines().count(), 18, "{text}");
    Ok(())
}

/// A bucket that does not exist, or one without the Object Lock asked for, is refused at
/// start, naming the setting; an S3 that does not answer is not (the export retries).
#[tokio::test]
async fn serve_refuses_a_bucket_that_cannot_take_the_trail() -> TestResult {
    let s3 = s3_client().await;
    let unlocked = crate::support::unique_name("plain").to_ascii_lowercase();
    s3.create_bucket().bucket(&unlocked).send().await?;
    for (bucket, expected) in [
        ("no-such-bucket-here", "no such bucket"),
        (unlocked.as_str(), "Object Lock is not enabled"),
    ] {
        let started = spawn_app_with(RedisServer::start(), |config| {
            config
                .set("audit.s3.bucket", bucket)
                .set("audit.s3.object_lock_days", 1)
        })
        .await;
        let error = format!("{:#}", started.err().ok_or("it started")?);
        assert!(
            error.contains("audit.s3") && error.contains(expected),
            "{error}"
        );
    }
    let proxy = Proxy::start(&partners().sfn_endpoint).await?;
    proxy.down();
    let started = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("audit.s3.bucket", "any-bucket")
            .set("audit.s3.endpoint_url", proxy.url.as_str())
    })
    .await;
    assert!(started.is_ok(), "an unreachable S3 stopped the start");
    Ok(())
}
