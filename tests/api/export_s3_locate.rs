//! Where the S3 exporter finds the trail's end: a segment written just before a crash is
//! taken as written (not written twice), while a foreign segment, or a cursor another sink
//! moved, stops it; an object is never replaced; a bucket that cannot take the trail is
//! refused at start.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::json;
use stepgate::audit::export::{ExportSettings, Exporter, S3Settings, SinkSettings};
use stepgate::audit::s3::{S3Location, TrailBucket};

use crate::export_s3::{PREFIX, keys_under};
use crate::support::{
    Proxy, RedisServer, TestResult, create_locked_bucket, keys, partners, s3_client, spawn_app_with,
};

/// A client for `bucket` under `PREFIX`, as the exporter makes one.
async fn trail_bucket(bucket: &str) -> TestResult<TrailBucket> {
    let aws: stepgate::config::AwsConfig = serde_json::from_value(json!({
        "region": "us-east-1",
        "endpoint_url": partners().sfn_endpoint,
        "static_credentials": {"access_key_id": "test", "secret_access_key": "test"},
    }))?;
    let location = S3Location {
        bucket: bucket.to_owned(),
        prefix: PREFIX.to_owned(),
    };
    Ok(TrailBucket::connect(Some(&aws), None, location).await)
}

fn body(seq: u64) -> String {
    format!("{{\"seq\":{seq},\"tag\":\"a\"}}")
}

/// Redis with records 1..=30 (unsigned: what is exported is not verified here).
async fn redis_with_records() -> TestResult<RedisServer> {
    redis_with(30).await
}

/// Redis with records 1..=`last`.
async fn redis_with(last: u64) -> TestResult<RedisServer> {
    let server = RedisServer::start();
    let mut raw = server.connection().await?;
    let mut pipe = redis::pipe();
    for seq in 1..=last {
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
        .arg(last)
        .ignore();
    let () = pipe.query_async(&mut raw).await?;
    Ok(server)
}

/// Runs an S3 exporter into `bucket` for `run` (or until it exported record 30), then stops
/// it; the export cursor then.
async fn export_for(server: &RedisServer, bucket: &str, run: Duration) -> TestResult<Option<u64>> {
    export_until(server, bucket, run, 30).await
}

async fn export_until(
    server: &RedisServer,
    bucket: &str,
    run: Duration,
    last: u64,
) -> TestResult<Option<u64>> {
    let settings = ExportSettings {
        sink: SinkSettings::S3(S3Settings {
            bucket: trail_bucket(bucket).await?,
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
    let mut raw = server.connection().await?;
    let deadline = tokio::time::Instant::now() + run;
    let mut exported = None;
    while tokio::time::Instant::now() < deadline {
        exported = redis::cmd("HGET")
            .arg(keys().audit_export())
            .arg("seq")
            .query_async(&mut raw)
            .await?;
        if exported == Some(last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    exporter.await?;
    Ok(exported)
}

/// A new bucket whose first segment (`records/…1.jsonl`) holds `segment`.
async fn bucket_holding(segment: Vec<u8>) -> TestResult<(aws_sdk_s3::Client, String)> {
    let s3 = s3_client().await;
    let bucket = create_locked_bucket(&s3).await?;
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000001.jsonl"))
        .body(ByteStream::from(segment))
        .send()
        .await?;
    Ok((s3, bucket))
}

fn lines(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    seqs.flat_map(|seq| stepgate::audit::files::record_line(&body(seq), "").unwrap_or_default())
        .collect()
}

/// A segment written just before a crash (the cursor in Redis not moved yet) is taken as
/// written: the next exporter goes on after it, and no record lands in two objects.
#[tokio::test]
async fn a_segment_written_just_before_a_crash_is_taken_as_written() -> TestResult {
    let server = redis_with_records().await?;
    let (s3, bucket) = bucket_holding(lines(1..=12)).await?;
    assert_eq!(
        export_for(&server, &bucket, Duration::from_secs(20)).await?,
        Some(30)
    );
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

/// The cursor names its segment (records 1..=12), and a longer segment (13..=1,100: more
/// than a page of Redis reads) lies past it: both are taken, the export goes on after them.
#[tokio::test]
async fn a_long_segment_past_a_named_cursor_is_taken_as_written() -> TestResult {
    let server = redis_with(1_200).await?;
    let (s3, bucket) = bucket_holding(lines(1..=12)).await?;
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000013.jsonl"))
        .body(ByteStream::from(lines(13..=1_100)))
        .send()
        .await?;
    let () = redis::cmd("HSET")
        .arg(keys().audit_export())
        .arg("seq")
        .arg(12)
        .arg("sink")
        .arg(format!(
            "s3://{bucket}/{PREFIX}records/00000000000000000001.jsonl"
        ))
        .query_async(&mut server.connection().await?)
        .await?;
    assert_eq!(
        export_until(&server, &bucket, Duration::from_secs(20), 1_200).await?,
        Some(1_200)
    );
    assert_eq!(
        keys_under(&s3, &bucket, "records/").await?,
        [1, 13, 1_101]
            .map(|first| format!("{PREFIX}records/{first:020}.jsonl"))
            .to_vec()
    );
    Ok(())
}

/// A segment past the cursor whose records are not Redis' (another trail's, or one edited
/// in the middle with its last line intact) is not taken: nothing is exported on top of it,
/// and the cursor does not move, until it is put right.
#[tokio::test]
async fn a_foreign_segment_past_the_cursor_stops_the_export() -> TestResult {
    let server = redis_with_records().await?;
    let mut edited = lines(1..=5);
    edited.extend(
        stepgate::audit::files::record_line("{\"seq\":6,\"tag\":\"b\"}", "").unwrap_or_default(),
    );
    edited.extend(lines(7..=12));
    let (s3, bucket) = bucket_holding(edited).await?;
    assert_eq!(
        export_for(&server, &bucket, Duration::from_secs(3)).await?,
        None
    );
    assert_eq!(keys_under(&s3, &bucket, "records/").await?.len(), 1);
    // That segment, and only it, stopped the export: put right, the export goes on.
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000001.jsonl"))
        .body(ByteStream::from(lines(1..=12)))
        .send()
        .await?;
    assert_eq!(
        export_for(&server, &bucket, Duration::from_secs(20)).await?,
        Some(30)
    );
    Ok(())
}

/// A cursor the files sink moved (the export switched to S3 over a trail exported to
/// files, only partly uploaded): the records it counts are not all in the prefix, so
/// nothing is written there, until they are.
#[tokio::test]
async fn a_cursor_another_sink_moved_stops_the_export() -> TestResult {
    let server = redis_with_records().await?;
    let mut raw = server.connection().await?;
    let () = redis::cmd("HSET")
        .arg(keys().audit_export())
        .arg("seq")
        .arg(10)
        .arg("sink")
        .arg("files")
        .query_async(&mut raw)
        .await?;
    // Part of the files uploaded: the prefix is not empty, but it lacks records 6..=10.
    let (s3, bucket) = bucket_holding(lines(1..=5)).await?;
    assert_eq!(
        export_for(&server, &bucket, Duration::from_secs(3)).await?,
        Some(10)
    );
    assert_eq!(keys_under(&s3, &bucket, "records/").await?.len(), 1);
    // The rest uploaded (as a segment of its own): the cursor's records are all there, and
    // the export goes on after them.
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}records/00000000000000000006.jsonl"))
        .body(ByteStream::from(lines(6..=10)))
        .send()
        .await?;
    assert_eq!(
        export_for(&server, &bucket, Duration::from_secs(20)).await?,
        Some(30)
    );
    let segments = keys_under(&s3, &bucket, "records/").await?;
    assert_eq!(
        segments.last(),
        Some(&format!("{PREFIX}records/00000000000000000011.jsonl"))
    );
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

/// An object is only ever created: a second write to its key leaves the first in place.
#[tokio::test]
async fn an_object_is_never_replaced() -> TestResult {
    use stepgate::audit::s3::Put;
    let s3 = s3_client().await;
    let bucket = create_locked_bucket(&s3).await?;
    let trail = trail_bucket(&bucket).await?;
    let key = format!("{PREFIX}records/00000000000000000001.jsonl");
    assert_eq!(
        trail.put_new(&key, b"first\n".to_vec(), Some(1)).await?,
        Put::Written
    );
    assert_eq!(
        trail.put_new(&key, b"second\n".to_vec(), Some(1)).await?,
        Put::Exists
    );
    assert_eq!(trail.get(&key).await?.as_deref(), Some(&b"first\n"[..]));
    Ok(())
}
