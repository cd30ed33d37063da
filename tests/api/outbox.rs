//! The transactional audit outbox: an event written with the state change it records
//! survives the process that wrote it, is chained exactly once however many writers relay
//! it (and whatever Redis does mid-call), and nobody without the signing key can have an
//! event of their own chained.

use std::time::Duration;

use serde_json::json;
use stepgate::audit::outbox::{Seal, SealedEvent};
use stepgate::audit::{AuditEvent, AuditLog, AuditSigner, EventKind, WriterSettings};
use stepgate::config::Config;
use stepgate::redis_conn::{RedisConnection, RedisEndpoint};

use crate::support::{
    RedisServer, TestApp, TestResult, keys, partners, request_id_of, spawn_app_with, workflow_named,
};

/// An app whose own drain is off (its writer runs and relays the outboxes).
async fn app_without_drain() -> TestResult<TestApp> {
    spawn_app_with(RedisServer::start(), |config| {
        config.set("worker.enabled", false)
    })
    .await
}

async fn connect(app: &TestApp, timeout: Duration) -> TestResult<RedisConnection> {
    let config = Config::load(&app.config_path)?;
    Ok(RedisEndpoint::from_config(&config.redis)?
        .connect(timeout)
        .await?)
}

fn signer(app: &TestApp) -> TestResult<AuditSigner> {
    let dir = app.config_path.parent().ok_or("no dir")?;
    Ok(AuditSigner::load(&dir.join("audit.key"))?)
}

/// A writer of this process on `app`'s trail, with `app`'s signing key.
fn writer(app: &TestApp, redis: RedisConnection) -> TestResult<AuditLog> {
    let (log, writer) = AuditLog::new(
        redis,
        keys(),
        signer(app)?,
        Vec::new(),
        WriterSettings::default(),
    );
    tokio::spawn(writer.run());
    Ok(log)
}

/// The request ids of the trail's records of `event`.
async fn request_ids(app: &TestApp, event: &str) -> TestResult<Vec<String>> {
    Ok(app
        .audit_records()
        .await?
        .iter()
        .filter(|r| r["event"] == event)
        .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
        .collect())
}

/// The drain records outcomes in Redis, and each outcome's record goes into the outbox in
/// the same script: a process killed after that (here: one whose writer never runs at all)
/// loses no record. Before the outbox, the record waited in that process's memory.
#[tokio::test]
async fn a_started_record_survives_a_process_whose_writer_never_appended() -> TestResult {
    let app = app_without_drain().await?;
    let token = partners().idp.billing_token().await?;
    let mut accepted = Vec::new();
    for n in 0..5 {
        accepted.push(app.accept(&token, &json!({"n": n})).await?);
    }
    // The dying process's trail handle: its writer is dropped, never run.
    let (dying, _never_run) = AuditLog::new(
        connect(&app, Duration::from_secs(2)).await?,
        keys(),
        signer(&app)?,
        Vec::new(),
        WriterSettings::default(),
    );
    let (drain, _targets) = app.standalone_drain(dying).await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        drain.run_until_empty(tokio_util::sync::CancellationToken::new()),
    )
    .await?;
    // Another process's writer (the app's) relays what the dead one left in the outbox.
    let mut started = request_ids(&app, "started").await?;
    started.sort();
    accepted.sort();
    assert_eq!(
        started, accepted,
        "each started request recorded exactly once"
    );
    let (code, report) = crate::audit::verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

/// Admission writes the trigger's `accepted` record into the outbox in the script that
/// admits it: a replica killed right after its 202s (here: one whose writer never runs at
/// all) loses no record. Before the outbox, the record waited in that replica's memory.
#[tokio::test]
async fn an_accepted_record_survives_a_replica_whose_writer_never_appended() -> TestResult {
    let app = app_without_drain().await?;
    let dying = app
        .replica_of(stepgate::startup::Application::without_audit_writer)
        .await?;
    let token = partners().idp.billing_token().await?;
    let client = reqwest::Client::new();
    let mut admitted = Vec::new();
    for n in 0..5 {
        let response = client
            .post(format!("{}/v1/workflows/orders/executions", dying.base))
            .bearer_auth(&token)
            .json(&json!({ "input": { "n": n } }))
            .send()
            .await?;
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        admitted.push(request_id_of(response).await?);
    }
    drop(dying);
    // The app's writer relays what the dead replica left in the outbox.
    let mut accepted = request_ids(&app, "accepted").await?;
    accepted.sort();
    admitted.sort();
    assert_eq!(
        accepted, admitted,
        "each admitted request recorded exactly once"
    );
    let (code, report) = crate::audit::verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

/// `count` events of `orders`, sealed with `app`'s key, written straight into its outbox.
async fn fill_outbox(app: &TestApp, count: usize) -> TestResult<Vec<String>> {
    let events: Vec<AuditEvent> = (0..count)
        .map(|n| {
            let mut event = AuditEvent::now(EventKind::Retried);
            event.workflow = Some("orders".into());
            event.attempt = Some(n as u32);
            event
        })
        .collect();
    write_to_outbox(app, &events).await?;
    Ok(events.into_iter().map(|event| event.id).collect())
}

/// `events`, sealed with `app`'s key, written into `orders`' outbox in one pipeline
/// (whatever workflow they name).
async fn write_to_outbox(app: &TestApp, events: &[AuditEvent]) -> TestResult {
    let seal = Seal::of(&signer(app)?);
    let mut redis = app.redis.connection().await?;
    let mut pipe = redis::pipe();
    for event in events {
        let SealedEvent { json, mac } = seal.seal(event);
        pipe.cmd("XADD")
            .arg(keys().audit_outbox(&workflow_named("orders")?))
            .arg("*")
            .arg("event")
            .arg(json)
            .arg("mac")
            .arg(mac)
            .ignore();
    }
    let () = pipe.query_async(&mut redis).await?;
    Ok(())
}

/// How many records of the trail carry each of `ids`, after a flush.
async fn times_chained(app: &TestApp, ids: &[String]) -> TestResult<Vec<usize>> {
    Ok(count_ids(&app.audit_records().await?, ids))
}

/// How many records of the trail carry each of `ids`, as written (no flush first).
async fn times_chained_written(app: &TestApp, ids: &[String]) -> TestResult<Vec<usize>> {
    Ok(count_ids(&app.audit_records_written().await?, ids))
}

fn count_ids(records: &[serde_json::Value], ids: &[String]) -> Vec<usize> {
    ids.iter()
        .map(|id| records.iter().filter(|r| r["id"] == id.as_str()).count())
        .collect()
}

/// Three writers (two more processes' and the app's) relay one outbox at once, and Redis
/// freezes mid-call so that appends time out after Redis may have run them and are tried
/// again: every event is chained exactly once, and the outbox ends empty.
#[tokio::test]
async fn every_outbox_event_is_chained_exactly_once_by_racing_writers() -> TestResult {
    let app = app_without_drain().await?;
    let ids = fill_outbox(&app, 700).await?;
    let first = writer(&app, connect(&app, Duration::from_millis(200)).await?)?;
    let second = writer(&app, connect(&app, Duration::from_millis(200)).await?)?;
    first.nudge();
    second.nudge();
    // Frozen while appends are on the wire: each times out, then Redis runs it anyway.
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.redis.pause();
    tokio::time::sleep(Duration::from_millis(600)).await;
    app.redis.resume();
    let (first, second) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(first.flush(), second.flush())
    })
    .await?;
    first?;
    second?;
    // Read as written, without another flush: each flush promised everything chained.
    let chained = times_chained_written(&app, &ids).await?;
    assert!(chained.iter().all(|n| *n == 1), "{chained:?}");
    let mut redis = app.redis.connection().await?;
    let left: u64 = redis::cmd("XLEN")
        .arg(keys().audit_outbox(&workflow_named("orders")?))
        .query_async(&mut redis)
        .await?;
    assert_eq!(left, 0, "chained entries are deleted from the outbox");
    let (code, report) = crate::audit::verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

/// Someone who can write to Redis but lacks the signing key adds outbox entries: an
/// unsealed one, one sealed with another key, one whose event was edited after sealing. None
/// is chained, each is counted, and the sealed event behind them still is.
#[tokio::test]
async fn an_outbox_entry_without_a_valid_seal_is_never_chained() -> TestResult {
    let app = app_without_drain().await?;
    let outbox = keys().audit_outbox(&workflow_named("orders")?);
    let forged = |reason: &str| {
        let mut event = AuditEvent::now(EventKind::Started);
        event.workflow = Some("orders".into());
        event.reason = Some(reason.into());
        event
    };
    let stranger = Seal::of(&AuditSigner::generate()).seal(&forged("sealed by a stranger"));
    let ours = Seal::of(&signer(&app)?);
    let edited = ours.seal(&forged("edited after sealing"));
    let edited_json = edited
        .json
        .replace("edited after sealing", "edited, forged");
    let entries = [
        (serde_json::to_string(&forged("unsealed"))?, String::new()),
        (stranger.json, stranger.mac),
        (edited_json, edited.mac),
    ];
    let before = app
        .metric("stepgate_audit_outbox_rejected_total")
        .await?
        .unwrap_or(0.0);
    let mut redis = app.redis.connection().await?;
    // Written long ago (explicit old ids): a seal by an unknown key is given a few minutes
    // in case a process holding that key relays it (a rotation), then taken for forged.
    for (n, (json, mac)) in entries.iter().enumerate() {
        let _: String = redis::cmd("XADD")
            .arg(&outbox)
            .arg(format!("1000-{n}"))
            .arg("event")
            .arg(json)
            .arg("mac")
            .arg(mac)
            .query_async(&mut redis)
            .await?;
    }
    let genuine = fill_outbox(&app, 1).await?;
    let records = app.audit_records().await?;
    let reasons: Vec<&str> = records
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        !reasons
            .iter()
            .any(|r| r.contains("unsealed") || r.contains("stranger") || r.contains("forged")),
        "{reasons:?}"
    );
    assert_eq!(times_chained(&app, &genuine).await?, [1]);
    let rejected = app.metric("stepgate_audit_outbox_rejected_total").await?;
    assert!(rejected.is_some_and(|n| n >= before + 3.0), "{rejected:?}");
    Ok(())
}

/// Someone with Redis access copies a genuinely sealed event of another workflow into this
/// outbox, as the last of a page (whose record would carry the append's signature): it is
/// never chained here, it is counted, the events before it are chained once, and the trail
/// still verifies.
#[tokio::test]
async fn a_sealed_event_copied_into_another_workflows_outbox_is_never_chained() -> TestResult {
    let app = app_without_drain().await?;
    let event_of = |workflow: &str| {
        let mut event = AuditEvent::now(EventKind::Retried);
        event.workflow = Some(workflow.into());
        event
    };
    let events = [event_of("orders"), event_of("orders"), event_of("billing")];
    let before = app
        .metric("stepgate_audit_outbox_rejected_total")
        .await?
        .unwrap_or(0.0);
    write_to_outbox(&app, &events).await?;
    let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    assert_eq!(times_chained(&app, &ids).await?, [1, 1, 0]);
    let rejected = app.metric("stepgate_audit_outbox_rejected_total").await?;
    // At least: the counter is the process's, and other tests here add to it meanwhile.
    assert!(rejected.is_some_and(|n| n >= before + 1.0), "{rejected:?}");
    // A page of nothing but such entries: the mark still passes it (a flush answers), and
    // what follows is chained.
    let alone = [event_of("billing")];
    write_to_outbox(&app, &alone).await?;
    assert_eq!(times_chained(&app, &[alone[0].id.clone()]).await?, [0]);
    let after = [event_of("orders")];
    write_to_outbox(&app, &after).await?;
    assert_eq!(times_chained(&app, &[after[0].id.clone()]).await?, [1]);
    let rejected = app.metric("stepgate_audit_outbox_rejected_total").await?;
    assert!(rejected.is_some_and(|n| n >= before + 2.0), "{rejected:?}");
    let (code, report) = crate::audit::verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

/// During a rolling key rotation a process may meet an entry sealed by the new key, which it
/// does not hold: it leaves it (and what follows) for a process that holds the key, rather
/// than skipping it as forged and losing the event; and its flush, which promises everything
/// in the outboxes chained, waits until that process has relayed it rather than report
/// success with the entry (and a trigger's record behind it) still unchained.
#[tokio::test]
async fn a_flush_waits_for_an_entry_only_a_process_holding_its_key_can_relay() -> TestResult {
    let app = app_without_drain().await?;
    let outbox = keys().audit_outbox(&workflow_named("orders")?);
    let mut event = AuditEvent::now(EventKind::Started);
    event.workflow = Some("orders".into());
    let newer_key = AuditSigner::generate();
    let newer = Seal::of(&newer_key).seal(&event);
    let mut redis = app.redis.connection().await?;
    let _: String = redis::cmd("XADD")
        .arg(&outbox)
        .arg("*")
        .arg("event")
        .arg(&newer.json)
        .arg("mac")
        .arg(&newer.mac)
        .query_async(&mut redis)
        .await?;
    let behind = fill_outbox(&app, 1).await?;
    let audit = app.audit.clone().ok_or("the app has an audit trail")?;
    let waiting = audit.clone();
    let flush = tokio::spawn(async move { waiting.flush().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !flush.is_finished(),
        "a flush does not report success past an entry it could not relay"
    );
    // A caller that gives up (a fail-closed request at its deadline) frees the writer: it
    // does not go on waiting for nobody while its own events queue up behind the flush.
    flush.abort();
    let own = AuditEvent::now(EventKind::Started);
    audit
        .record_durably(own.clone(), Duration::from_secs(3))
        .await?;
    let flush = {
        let waiting = audit.clone();
        tokio::spawn(async move { waiting.flush().await })
    };
    let records = app.audit_records_written().await?;
    let chained = |id: &str| records.iter().filter(|r| r["id"] == id).count();
    assert_eq!(
        chained(&event.id),
        0,
        "not chained by a process lacking its key"
    );
    assert_eq!(chained(&behind[0]), 0, "kept in order behind it");
    let left: u64 = redis::cmd("XLEN")
        .arg(&outbox)
        .query_async(&mut redis)
        .await?;
    assert_eq!(left, 2, "nothing deleted");
    // A process of the new version: the new key, the old one retired.
    let (newer_log, newer_writer) = AuditLog::new(
        connect(&app, Duration::from_secs(2)).await?,
        keys(),
        newer_key,
        vec![signer(&app)?],
        WriterSettings::default(),
    );
    tokio::spawn(newer_writer.run());
    newer_log.nudge();
    tokio::time::timeout(Duration::from_secs(10), flush).await???;
    let records = app.audit_records_written().await?;
    let chained = |id: &str| records.iter().filter(|r| r["id"] == id).count();
    assert_eq!(chained(&own.id), 1);
    assert_eq!(
        (chained(&event.id), chained(&behind[0])),
        (1, 1),
        "each chained once, by the process holding the key, before the flush answered"
    );
    Ok(())
}

/// A flush promises what was in the outboxes when it began, not that they are empty: an
/// outbox written to faster than it is relayed (a flood) cannot keep it from answering, as
/// it could when a flush relayed until every outbox was empty.
#[tokio::test]
async fn a_flush_under_a_flood_answers_once_what_came_before_it_is_chained() -> TestResult {
    let app = app_without_drain().await?;
    let before = fill_outbox(&app, 300).await?;
    let audit = app.audit.clone().ok_or("the app has an audit trail")?;
    let flood = async {
        loop {
            if let Err(e) = fill_outbox(&app, 500).await {
                return e;
            }
        }
    };
    let flushed = tokio::select! {
        flushed = tokio::time::timeout(Duration::from_secs(8), audit.flush()) => flushed,
        e = flood => return Err(e),
    };
    flushed??;
    let chained = times_chained_written(&app, &before).await?;
    assert!(chained.iter().all(|n| *n == 1), "{chained:?}");
    Ok(())
}
