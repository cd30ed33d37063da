//! The audit trail on real partners: `stepgate audit verify` against every kind of
//! tampering, key rotation, checkpoints and proofs (checked by an independent Python
//! implementation too), and several writers sharing one chain.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use redis::streams::StreamRangeReply;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stepgate::audit::record::sha256_hex;
use stepgate::audit::{AuditEvent, AuditSigner, EventKind};

use crate::support::{
    RedisServer, TestApp, TestResult, keys, partners, root, spawn_app, spawn_app_with,
};

/// A trail with every kind of record of this version: config_loaded, accepted, started,
/// denied, auth_failed; a checkpoint after each append when `checkpoint_every` is 1.
async fn app_with_a_trail(checkpoint_every: Option<u64>) -> TestResult<(TestApp, String)> {
    let app = spawn_app_with(RedisServer::start(), |config| match checkpoint_every {
        Some(every) => config.set("audit.checkpoint_every", every),
        None => config,
    })
    .await?;
    let token = add_records(&app).await?;
    let events: Vec<_> = app
        .audit_records()
        .await?
        .into_iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(
        events,
        vec![
            json!("config_loaded"),
            json!("accepted"),
            json!("started"),
            json!("denied"),
            json!("auth_failed")
        ]
    );
    Ok((app, token))
}

/// accepted + started + denied + auth_failed; returns the allowed caller's token.
async fn add_records(app: &TestApp) -> TestResult<String> {
    app.one_of_each_decision().await
}

/// `stepgate audit verify --json`: exit code and the report.
pub(crate) fn verify_json(app: &TestApp, extra: &[&str]) -> TestResult<(i32, Value)> {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    report_of(&app.stepgate(&args)?)
}

/// A `--json` verification's exit code and report (its output in the error, if not JSON).
pub(crate) fn report_of(output: &std::process::Output) -> TestResult<(i32, Value)> {
    let report = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.code().unwrap_or(-1), report))
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) body: String,
    pub(crate) sig: String,
}

async fn entries(app: &TestApp) -> TestResult<Vec<Entry>> {
    stream_entries(app, &keys().audit_log()).await
}

/// The `body` and `sig` fields of a trail stream's entries (records or checkpoints).
pub(crate) async fn stream_entries(app: &TestApp, key: &str) -> TestResult<Vec<Entry>> {
    let mut redis = app.redis.connection().await?;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await?;
    Ok(reply
        .ids
        .iter()
        .map(|e| Entry {
            body: e.get("body").unwrap_or_default(),
            sig: e.get("sig").unwrap_or_default(),
        })
        .collect())
}

/// Replaces the record stream (streams are append-only, so: delete and re-add).
async fn rewrite(app: &TestApp, records: &[Entry]) -> TestResult {
    let mut redis = app.redis.connection().await?;
    let _: () = redis::cmd("DEL")
        .arg(keys().audit_log())
        .query_async(&mut redis)
        .await?;
    for record in records {
        let _: String = redis::cmd("XADD")
            .arg(keys().audit_log())
            .arg("*")
            .arg("body")
            .arg(&record.body)
            .arg("sig")
            .arg(&record.sig)
            .query_async(&mut redis)
            .await?;
    }
    Ok(())
}

/// Record `seq` as `signer` would write it, chained after `previous`.
fn forged(event: EventKind, seq: u64, previous: &Entry, signer: &AuditSigner) -> Entry {
    let body =
        AuditEvent::now(event).body(seq, &sha256_hex(previous.body.as_bytes()), signer.kid());
    Entry {
        sig: BASE64.encode(signer.sign(&body)),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn set_head(app: &TestApp, seq: usize, last: &Entry) -> TestResult {
    let mut redis = app.redis.connection().await?;
    let _: () = redis::cmd("HSET")
        .arg(keys().audit_head())
        .arg("seq")
        .arg(seq)
        .arg("hash")
        .arg(sha256_hex(last.body.as_bytes()))
        .query_async(&mut redis)
        .await?;
    Ok(())
}

#[tokio::test]
async fn verify_passes_on_a_real_trail_with_the_public_key_alone() -> TestResult {
    let (app, token) = app_with_a_trail(Some(1)).await?;
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!((code, &report["ok"]), (0, &json!(true)), "{report}");
    assert_eq!(report["verified"]["records"], 5);
    assert!(
        report["verified"]["checkpoints"].as_u64() >= Some(3),
        "{report}"
    );

    let public_key = app.config_path.with_file_name("audit.pub");
    let output = app.stepgate(&[
        "audit",
        "verify",
        "--public-key",
        &public_key.display().to_string(),
    ])?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("verified: 5 records"),
        "{text}"
    );

    let trail: Vec<String> = entries(&app).await?.into_iter().map(|e| e.body).collect();
    assert!(
        !trail.concat().contains(&token),
        "no record holds the bearer token"
    );
    for body in &trail {
        let record: Value = serde_json::from_str(body)?;
        assert_eq!(record["v"], stepgate::audit::record::SCHEMA_VERSION);
        assert!(
            record["id"].as_str().is_some_and(|id| id.len() == 36),
            "{record}"
        );
    }
    Ok(())
}

/// Each kind of tampering, done to a real trail in Redis, is found and named: its kind,
/// the record's seq and where it is, with the exit code of its class.
#[tokio::test]
async fn tamper_matrix() -> TestResult {
    let (app, _) = app_with_a_trail(Some(1)).await?;
    let original = entries(&app).await?;
    assert_eq!(original.len(), 5);
    let key = AuditSigner::load(&app.config_path.with_file_name("audit.key"))?;
    let stranger = AuditSigner::generate();

    let mut cases: Vec<(&str, Vec<Entry>, &str, u64, i32)> = Vec::new();
    // A signed record fails its signature; an unsigned one (covered by the next signature)
    // breaks the chain at the next record.
    let mut modified = original.clone();
    modified[3].body = modified[3].body.replace("\"denied\"", "\"accepted\"");
    let (kind, seq) = if original[3].sig.is_empty() {
        ("chain_broken", 5)
    } else {
        ("modified", 4)
    };
    cases.push(("modify", modified, kind, seq, 1));
    let mut deleted = original.clone();
    deleted.remove(1);
    cases.push(("delete", deleted, "sequence", 2, 1));
    let mut inserted = original.clone();
    inserted.insert(3, original[1].clone());
    cases.push(("insert", inserted, "sequence", 4, 1));
    let mut reordered = original.clone();
    reordered.swap(1, 2);
    cases.push(("reorder", reordered, "sequence", 2, 1));
    let mut wrong_key = original.clone();
    wrong_key[2] = forged(EventKind::Started, 3, &original[1], &stranger);
    cases.push(("wrong key", wrong_key, "unknown_key", 3, 5));
    // A record re-signed with the right key but edited: chained wrongly.
    let mut rechained = original.clone();
    rechained[2] = forged(EventKind::Started, 3, &original[0], &key);
    cases.push(("edited and re-signed", rechained, "chain_broken", 3, 1));

    for (name, records, kind, seq, exit) in cases {
        rewrite(&app, &records).await?;
        let (code, report) = verify_json(&app, &[])?;
        let problem = &report["problem"];
        assert_eq!(
            (code, problem["kind"].as_str(), problem["seq"].as_u64()),
            (exit, Some(kind), Some(seq)),
            "{name}: {report}"
        );
        assert!(
            problem["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("stream entry ")),
            "{name}: {report}"
        );
    }

    // Truncation after a checkpoint, with the head rewritten to match: the checkpoint
    // still covers the removed records.
    rewrite(&app, &original[..3]).await?;
    set_head(&app, 3, &original[2]).await?;
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(
        (
            code,
            report["problem"]["kind"].as_str(),
            report["problem"]["seq"].as_u64()
        ),
        (4, Some("truncated"), Some(4)),
        "{report}"
    );
    // The same without the head rewritten: the head says so too.
    set_head(&app, 5, &original[4]).await?;
    let (code, _) = verify_json(&app, &[])?;
    assert_eq!(code, 4);

    rewrite(&app, &original).await?;
    assert_eq!(
        verify_json(&app, &[])?.0,
        0,
        "the untouched trail verifies again"
    );
    Ok(())
}

/// Certificate Transparency's answer to tail truncation: an auditor keeps the newest
/// signed checkpoint outside Redis. Cutting the newest records off with the checkpoints
/// over them, and rewriting the head, verifies from Redis alone; not against the saved one.
#[tokio::test]
async fn a_tail_cut_with_its_checkpoints_is_caught_by_a_saved_checkpoint() -> TestResult {
    let (app, _) = app_with_a_trail(Some(1)).await?;
    let dir = tempfile::tempdir()?;
    let saved = dir.path().join("last.json").display().to_string();
    let output = app.stepgate(&["audit", "checkpoint", "--out", &saved])?;
    assert!(output.status.success(), "{output:?}");
    let (code, report) = verify_json(&app, &["--since", &saved])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["consistent_with"], 5, "{report}");

    // The attack: the newest append cut off with its checkpoint, the head rewritten.
    let original = entries(&app).await?;
    let sizes = checkpoint_sizes(&app)?;
    let keep = sizes
        .iter()
        .copied()
        .filter(|size| *size < original.len())
        .max()
        .ok_or("no earlier checkpoint")?;
    rewrite(&app, &original[..keep]).await?;
    let mut redis = app.redis.connection().await?;
    let checkpoints: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys().audit_checkpoints())
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await?;
    for entry in &checkpoints.ids {
        let body: String = entry.get("body").unwrap_or_default();
        let size = serde_json::from_str::<Value>(&body)?["size"].as_u64();
        if size.is_some_and(|size| size as usize > keep) {
            let _: i64 = redis::cmd("XDEL")
                .arg(keys().audit_checkpoints())
                .arg(&entry.id)
                .query_async(&mut redis)
                .await?;
        }
    }
    set_head(&app, keep, &original[keep - 1]).await?;
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(code, 0, "Redis alone cannot tell: {report}");
    let (code, report) = verify_json(&app, &["--since", &saved])?;
    assert_eq!(
        (code, report["problem"]["kind"].as_str()),
        (1, Some("inconsistent")),
        "{report}"
    );
    assert_eq!(report["problem"]["location"], "the saved checkpoint");

    // Restored, the trail is consistent with the saved checkpoint again.
    rewrite(&app, &original).await?;
    set_head(&app, original.len(), &original[original.len() - 1]).await?;
    let (code, report) = verify_json(&app, &["--since", &saved])?;
    assert_eq!(code, 0, "{report}");
    // A saved file that is not a checkpoint is a usage error, not a pass.
    std::fs::write(dir.path().join("bad.json"), "{}")?;
    let bad = dir.path().join("bad.json").display().to_string();
    let (code, _) = verify_json_raw(&app, &["--since", &bad])?;
    assert_ne!(code, 0);
    Ok(())
}

/// Every checkpoint also goes to the log, as one JSON line whose `checkpoint` field is the
/// saved form: a log pipeline outside Redis keeps what `verify --since` needs.
#[tokio::test]
async fn every_checkpoint_is_logged_in_the_form_verify_since_reads() -> TestResult {
    let (app, _) = app_with_a_trail(Some(1)).await?;
    let dir = tempfile::tempdir()?;
    let port = crate::support::free_port();
    let config = dir.path().join("process.toml");
    let process_config = app
        .base_config()
        .set("worker.enabled", false)
        .set("audit.checkpoint_every", 1)
        .set("log.format", "json")
        // What an operator who wants only warnings plus the checkpoints writes.
        .set("log.level", "warn,stepgate::audit::checkpoint=info")
        .set("server.listen", format!("127.0.0.1:{port}"));
    std::fs::write(&config, process_config.render())?;
    let log = dir.path().join("stderr.log");
    let _process = crate::support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("RUST_LOG")
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    // Its start (config_loaded) is an append, checkpointed.
    let logged = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "a checkpoint in the log",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                (line["target"] == "stepgate::audit::checkpoint")
                    .then(|| line["checkpoint"].as_str().map(str::to_owned))
                    .flatten()
            })
        },
    )
    .await;
    let size = serde_json::from_str::<Value>(&logged)?["checkpoint"]["size"].as_u64();
    assert!(size.is_some_and(|size| size > 5), "{logged}");
    let saved = dir.path().join("from-the-log.json");
    std::fs::write(&saved, &logged)?;
    let (code, report) = verify_json(&app, &["--since", &saved.display().to_string()])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["consistent_with"].as_u64(), size);
    Ok(())
}

/// The sizes of the trail's signed checkpoints, smallest first (`audit checkpoints`).
fn checkpoint_sizes(app: &TestApp) -> TestResult<Vec<usize>> {
    let listed = app.stepgate(&["audit", "checkpoints", "--json"])?;
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["size"].as_u64())
        .map(|size| size as usize)
        .collect())
}

/// `stepgate audit verify --json` for a run that may print no report: its exit code.
fn verify_json_raw(app: &TestApp, extra: &[&str]) -> TestResult<(i32, String)> {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let output = app.stepgate(&args)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok((output.status.code().unwrap_or(-1), text))
}

/// A restart with a new key and the old one under `retired_keys` rotates: the trail verifies
/// from the first public key alone and from the configuration alone, and a record signed
/// afterwards with the retired key is refused as such.
#[tokio::test]
async fn key_rotation_is_introduced_by_the_old_key_and_retires_it() -> TestResult {
    let (mut app, _) = app_with_a_trail(None).await?;
    app.stop().await;
    let dir = app.config_path.parent().ok_or("no dir")?.to_owned();
    std::fs::rename(dir.join("audit.key"), dir.join("old.key"))?;
    std::fs::rename(dir.join("audit.pub"), dir.join("old.pub"))?;
    let new_key = AuditSigner::generate();
    new_key.write_pair(&dir.join("audit.key"))?;
    let old_key = dir.join("old.key").display().to_string();
    app.reconfigure(|config| config.set("audit.retired_keys", json!([old_key])))?;
    app.start().await?;
    add_records(&app).await?;

    let records = app.audit_records().await?;
    let old = AuditSigner::load(&dir.join("old.key"))?;
    let rotation = records
        .iter()
        .position(|r| r["event"] == "key_rotated")
        .ok_or("no key_rotated record")?;
    assert_eq!(records[rotation]["kid"], old.kid(), "signed by the old key");
    assert_eq!(records[rotation]["new_kid"], new_key.kid());
    assert!(
        records[rotation + 1..]
            .iter()
            .all(|r| r["kid"] == new_key.kid())
    );
    assert_eq!(rotation, 5, "right after the first run's records");

    let old_public = dir.join("old.pub").display().to_string();
    let (code, report) = verify_json(&app, &["--public-key", &old_public])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["rotations"], json!([new_key.kid()]));
    // The configuration alone verifies too: the old key is among its retired keys.
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["rotations"], json!([new_key.kid()]));

    // A record appended with the retired key, chained correctly.
    let mut trail = entries(&app).await?;
    let last = trail.last().ok_or("empty")?.clone();
    trail.push(forged(
        EventKind::Accepted,
        trail.len() as u64 + 1,
        &last,
        &old,
    ));
    rewrite(&app, &trail).await?;
    set_head(&app, trail.len(), trail.last().ok_or("empty")?).await?;
    let (code, report) = verify_json(&app, &["--public-key", &old_public])?;
    assert_eq!(
        (
            code,
            report["problem"]["kind"].as_str(),
            report["problem"]["seq"].as_u64()
        ),
        (5, Some("retired_key"), Some(trail.len() as u64)),
        "{report}"
    );
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(
        (code, report["problem"]["kind"].as_str()),
        (5, Some("retired_key")),
        "{report}"
    );
    Ok(())
}

fn python() -> std::path::PathBuf {
    root().join(".venv/bin/python")
}

/// Runs `stepgate audit verify-proof` and the independent Python checker on `proof`.
fn check_proof(app: &TestApp, proof: &Value) -> TestResult<(bool, bool)> {
    let dir = app.config_path.parent().ok_or("no dir")?;
    let path = dir.join(format!("proof-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, serde_json::to_vec(proof)?)?;
    let public_key = dir.join("audit.pub");
    let ours = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        // Never the instance metadata service (a non-loopback address) from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["audit", "verify-proof", "--public-key"])
        .arg(&public_key)
        .arg(&path)
        .output()?;
    let theirs = Command::new(python())
        .arg(root().join("tests/audit_proof_check.py"))
        .arg(&public_key)
        .arg(&path)
        .output()?;
    assert!(
        theirs.status.code().is_some_and(|c| c <= 1),
        "the Python checker crashed: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    Ok((ours.status.success(), theirs.status.success()))
}

fn prove(app: &TestApp, args: &[&str]) -> TestResult<Value> {
    let mut all = vec!["audit", "prove"];
    all.extend_from_slice(args);
    let output = app.stepgate(&all)?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_check_out_independently() -> TestResult {
    let (app, _) = app_with_a_trail(Some(1)).await?;
    add_records(&app).await?;
    let sizes = checkpoint_sizes(&app)?;
    assert!(sizes.len() >= 4, "{sizes:?}");
    let (first, newest) = (sizes[0], sizes[sizes.len() - 1]);
    assert_eq!(newest, 9, "every record is under the newest checkpoint");

    for record in [1, 4, newest] {
        let proof = prove(&app, &["--record", &record.to_string()])?;
        assert_eq!(proof["tree_size"], newest);
        assert_eq!(
            check_proof(&app, &proof)?,
            (true, true),
            "record {record}: {proof}"
        );
        let mut tampered = proof.clone();
        tampered["record"]["body"] = json!(
            proof["record"]["body"]
                .as_str()
                .unwrap_or_default()
                .replace("\"seq\":", "\"x\":1,\"seq\":")
        );
        assert_eq!(
            check_proof(&app, &tampered)?,
            (false, false),
            "tampered record {record}"
        );
    }

    let consistency = prove(
        &app,
        &["--consistency", &first.to_string(), &newest.to_string()],
    )?;
    assert_eq!(
        check_proof(&app, &consistency)?,
        (true, true),
        "{consistency}"
    );
    let mut tampered = consistency.clone();
    if let Some(path) = tampered["path"].as_array_mut() {
        path[0] = json!(sha256_hex(b"another history"));
    }
    assert_eq!(check_proof(&app, &tampered)?, (false, false));
    Ok(())
}

/// Two processes write the shared chain at once: the trail verifies as one, holds every
/// event exactly once, and the record count equals the events generated.
#[tokio::test]
async fn two_writers_under_load_make_one_complete_chain() -> TestResult {
    const TRIGGERS: usize = 300;
    const DENIALS: usize = 60;
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("audit.checkpoint_every", 50)
            .set("audit.refusal_window_seconds", 1)
    })
    .await?;
    let replica = app.replica().await?;
    let idp = &partners().idp;
    let (token, denied) = (idp.billing_token().await?, idp.denied_token().await?);
    let bases = [app.base.clone(), replica.base.clone()];
    let mut tasks = Vec::new();
    for i in 0..TRIGGERS + DENIALS {
        let url = format!("{}/v1/workflows/orders/executions", bases[i % 2]);
        let token = if i < TRIGGERS {
            token.clone()
        } else {
            denied.clone()
        };
        let http = app.http.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"input": {"i": i}}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await?? {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, TRIGGERS);
    // config_loaded twice, accepted + started per trigger, denied per refusal, and one
    // `retried` per start attempt that failed (a slow emulator under load times out).
    let count =
        |records: &[Value], event: &str| records.iter().filter(|r| r["event"] == event).count();
    // Denials of one caller are aggregated (per process and window): their counts add up.
    let denials = |records: &[Value]| -> u64 {
        records
            .iter()
            .filter(|r| r["event"] == "denied")
            .filter_map(|r| r["count"].as_u64())
            .sum()
    };
    let records = crate::support::eventually(
        std::time::Duration::from_secs(60),
        "every event in the trail",
        || async {
            let records = app.audit_records().await.ok()?;
            (count(&records, "started") == TRIGGERS && denials(&records) == DENIALS as u64)
                .then_some(records)
        },
    )
    .await;
    let retried = count(&records, "retried");
    let denial_records = count(&records, "denied");
    assert!(
        denial_records <= 4,
        "{denial_records} records for the denials"
    );
    let expected = 2 + 2 * TRIGGERS + denial_records + retried;
    assert_eq!(
        records.len(),
        expected,
        "only the events generated, each once"
    );
    assert_eq!(count(&records, "config_loaded"), 2);
    assert_eq!(count(&records, "accepted"), TRIGGERS);
    let ids: std::collections::HashSet<_> = records.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids.len(), expected, "no event twice");
    let requests: std::collections::HashSet<_> = records
        .iter()
        .filter(|r| r["event"] == "accepted")
        .map(|r| r["request_id"].clone())
        .collect();
    assert_eq!(requests.len(), TRIGGERS);
    for record in records.iter().filter(|r| r["event"] == "retried") {
        assert!(requests.contains(&record["request_id"]), "{record}");
    }
    drop(replica);
    // The whole trail: the files, then Redis' tail.
    let trail = app.trail_dir.display().to_string();
    let (code, report) = verify_json(&app, &["--files", &trail])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["records"], expected as u64);
    // The first append checkpoints (none before), and 600-odd records later at least one more.
    assert!(
        report["verified"]["checkpoints"].as_u64() >= Some(2),
        "{report}"
    );
    Ok(())
}

/// Kept for the helper import: the plain `spawn_app` trail has no checkpoint until one is
/// due, and still verifies.
#[tokio::test]
async fn a_trail_without_checkpoints_yet_verifies() -> TestResult {
    let app = spawn_app().await?;
    add_records(&app).await?;
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

/// The file export: rotated JSON Lines that verify on their own, Redis trimmed behind them
/// (only what is exported and checkpointed), and both together verifying as one trail;
/// proofs still come from the files; an edited line is named by file and line.
#[tokio::test]
async fn exported_files_and_a_trimmed_stream_keep_verifying() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("audit.checkpoint_every", 2)
            .set("audit.files.dir", trail_dir.display().to_string())
            .set("audit.files.rotate_bytes", 2000)
            .set("audit.files.redis_keep_records", 3)
    })
    .await?;
    for _ in 0..3 {
        add_records(&app).await?;
    }
    let total = app.audit_records().await?.len() as u64 + trimmed_through(&app).await?;
    assert_eq!(total, 13);
    // Exported, checkpointed and trimmed down to what retention keeps.
    crate::support::eventually(
        std::time::Duration::from_secs(20),
        "export and trimming",
        || async {
            let trimmed = trimmed_through(&app).await.ok()?;
            let in_files = stepgate::audit::files::read_dir(&trail_dir).ok()?.0.len() as u64;
            (in_files == total && trimmed >= total - 4).then_some(())
        },
    )
    .await;
    let files = stepgate::audit::files::record_files(&trail_dir)?;
    assert!(files.len() >= 2, "rotated: {files:?}");
    let in_redis = entries(&app).await?.len() as u64;
    assert!(in_redis <= 4, "{in_redis} records left in Redis");

    let trail = trail_dir.display().to_string();
    let (code, report) = verify_json(&app, &["--files", &trail, "--no-redis"])?;
    assert_eq!(
        (code, &report["verified"]["records"]),
        (0, &json!(total)),
        "{report}"
    );
    // Trimmed only to a checkpoint boundary, which is what vouches for the trim point.
    let trimmed = trimmed_through(&app).await?;
    assert!(
        checkpoint_sizes(&app)?.contains(&(trimmed as usize)),
        "trimmed through {trimmed}, which no checkpoint covers exactly"
    );
    // The checkpoints before the trim point left Redis with their records; the files hold
    // them all.
    assert!(
        checkpoint_sizes(&app)?
            .iter()
            .all(|size| *size as u64 >= trimmed),
        "checkpoints below the trim point {trimmed} stay in Redis: {:?}",
        checkpoint_sizes(&app)?
    );
    let (_, in_files) = stepgate::audit::files::read_dir(&trail_dir)?;
    assert!(
        in_files.len() as u64 >= trimmed / 2,
        "{} checkpoints in the files",
        in_files.len()
    );
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(code, 0, "Redis alone, from the trim point: {report}");
    assert_eq!(report["verified"]["records"], in_redis);
    assert!(report["trimmed_before"].as_u64() > Some(0), "{report}");
    let (code, report) = verify_json(&app, &["--files", &trail])?;
    assert_eq!(
        (code, &report["verified"]["records"]),
        (0, &json!(total)),
        "{report}"
    );

    let proof = prove(&app, &["--record", "2", "--files", &trail])?;
    assert_eq!(check_proof(&app, &proof)?, (true, true));

    // An edited line in the first file.
    let (_, first) = &files[0];
    let text = std::fs::read_to_string(first)?;
    let edited = text.replacen("\"event\":\"denied\"", "\"event\":\"accepted\"", 1);
    assert_ne!(text, edited);
    let line = text
        .lines()
        .position(|l| l.contains("\"event\":\"denied\""))
        .ok_or("no denied record")?
        + 1;
    std::fs::write(first, edited)?;
    let (code, report) = verify_json(&app, &["--files", &trail, "--no-redis"])?;
    assert_eq!(
        (code, report["problem"]["kind"].as_str()),
        (1, Some("modified")),
        "{report}"
    );
    let location = report["problem"]["location"].as_str().unwrap_or_default();
    assert!(
        location.ends_with(&format!("{} line {line}", first.display())),
        "{report}"
    );
    Ok(())
}

/// The attack on retention: records deleted from the front of the stream and the trim
/// marker set from their public hashes, by anyone with write access to Redis (retention
/// configured or not). Verification from Redis alone must refuse the marker.
#[tokio::test]
async fn a_forged_trim_marker_fails_verification() -> TestResult {
    use stepgate::audit::merkle::{Frontier, leaf_hash};
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.checkpoint_every", 3)
    })
    .await?;
    for _ in 0..2 {
        add_records(&app).await?;
    }
    let records = entries(&app).await?;
    let sizes = checkpoint_sizes(&app)?;
    // A cut no checkpoint was made at (any cut at one is a genuine trim point).
    let cut = (2..records.len())
        .find(|n| !sizes.contains(n))
        .ok_or("every size is checkpointed")?;
    let mut frontier = Frontier::default();
    for record in &records[..cut] {
        frontier.push(leaf_hash(record.body.as_bytes()));
    }
    let last: Value = serde_json::from_str(&records[cut - 1].body)?;
    let mut redis = app.redis.connection().await?;
    let ids: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys().audit_log())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(cut)
        .query_async(&mut redis)
        .await?;
    for entry in &ids.ids {
        let _: i64 = redis::cmd("XDEL")
            .arg(keys().audit_log())
            .arg(&entry.id)
            .query_async(&mut redis)
            .await?;
    }
    let _: i64 = redis::cmd("HSET")
        .arg(keys().audit_trimmed())
        .arg("seq")
        .arg(cut)
        .arg("hash")
        .arg(sha256_hex(records[cut - 1].body.as_bytes()))
        .arg("frontier")
        .arg(frontier.encode())
        .arg("kid")
        .arg(last["kid"].as_str().unwrap_or_default())
        .query_async(&mut redis)
        .await?;
    let (code, report) = verify_json(&app, &[])?;
    assert_eq!(
        (code, report["problem"]["kind"].as_str()),
        (1, Some("checkpoint_mismatch")),
        "{report}"
    );
    assert_eq!(report["problem"]["location"], "the trim marker", "{report}");
    Ok(())
}

/// A graceful stop gives up the export lease, so a restarted (or another) exporter takes
/// over at once rather than after the lease expires.
#[tokio::test]
async fn a_graceful_stop_gives_up_the_export_lease() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let mut app = spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.files.dir", trail_dir.display().to_string())
    })
    .await?;
    let redis = app.redis.connection().await?;
    let holder = || {
        let mut redis = redis.clone();
        async move {
            redis::cmd("GET")
                .arg(keys().audit_export_lease())
                .query_async::<Option<String>>(&mut redis)
                .await
                .ok()
                .flatten()
        }
    };
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the exporter's lease",
        holder,
    )
    .await;
    app.stop().await;
    assert_eq!(holder().await, None, "the lease outlived its exporter");
    Ok(())
}

/// The seq of the last record trimmed from Redis (0: none).
async fn trimmed_through(app: &TestApp) -> TestResult<u64> {
    let mut redis = app.redis.connection().await?;
    let seq: Option<u64> = redis::cmd("HGET")
        .arg(keys().audit_trimmed())
        .arg("seq")
        .query_async(&mut redis)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// `GET /v1/audit`: only for `[audit_readers]`, filtered, paged by cursor, and each record
/// with a signature that checks out with the public key.
#[tokio::test]
async fn the_audit_api_filters_and_pages_for_audit_readers_only() -> TestResult {
    use ed25519_dalek::Verifier as _;
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.push(
            "audit_readers.allow",
            json!({"clients": ["reporting-service"]}),
        )
    })
    .await?;
    add_records(&app).await?;
    add_records(&app).await?;
    let idp = &partners().idp;
    let (reader, billing) = (idp.denied_token().await?, idp.billing_token().await?);
    let get = |query: &str, token: &str| {
        app.http
            .get(app.url(&format!("/v1/audit{query}")))
            .bearer_auth(token)
            .send()
    };
    let refused = get("", &billing).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(crate::support::header(&refused, "www-authenticate").starts_with("Bearer"));
    assert!(
        app.reasons("denied")
            .await?
            .iter()
            .any(|r| r.starts_with("audit API:"))
    );

    // Every record, four at a time.
    let mut all = Vec::new();
    let mut query = "?limit=4".to_owned();
    loop {
        let page: Value = get(&query, &reader).await?.json().await?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        assert!(records.len() <= 4);
        all.extend(records);
        match page["next_after"].as_str() {
            Some(next) => query = format!("?limit=4&after={next}"),
            None => break,
        }
    }
    let seqs: Vec<u64> = all
        .iter()
        .filter_map(|r| r["record"]["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "config, 2 x 4 decisions, the refusal"
    );

    let key = AuditSigner::load(&app.config_path.with_file_name("audit.key"))?.verifying_key();
    let signed: Vec<_> = all.iter().filter(|e| e["signature"].is_string()).collect();
    assert!(
        all.last().is_some_and(|e| e["signature"].is_string()),
        "the newest record is signed"
    );
    for entry in signed {
        let body = stepgate::audit::canonical::canonical_json(&entry["record"]);
        let signature = BASE64.decode(entry["signature"].as_str().unwrap_or_default())?;
        key.verify(&body, &ed25519_dalek::Signature::from_slice(&signature)?)?;
    }

    let started: Value = get("?event=started&workflow=orders", &reader)
        .await?
        .json()
        .await?;
    let started = started["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(started.len(), 2);
    assert!(
        started
            .iter()
            .all(|r| r["record"]["subject"] == "billing-service"
                && r["record"]["execution_arn"].as_str().is_some())
    );
    let by_subject: Value = get("?subject=reporting-service", &reader)
        .await?
        .json()
        .await?;
    let events: Vec<_> = by_subject["records"]
        .as_array()
        .map(|r| r.iter().map(|r| r["record"]["event"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        events,
        vec![json!("denied"), json!("denied")],
        "the reader's two refused triggers"
    );

    let sixth = all[5]["record"]["time"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let since: Value = get(&format!("?since={}", sixth.replace('+', "%2B")), &reader)
        .await?
        .json()
        .await?;
    let since = since["records"].as_array().cloned().unwrap_or_default();
    assert!(
        since
            .iter()
            .all(|r| r["record"]["time"].as_str() >= Some(sixth.as_str()))
            && since.len() >= 5,
        "{since:?}"
    );
    let until: Value = get(
        &format!(
            "?until={}",
            all[0]["record"]["time"].as_str().unwrap_or_default()
        ),
        &reader,
    )
    .await?
    .json()
    .await?;
    assert!(
        until["records"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["record"]["seq"] == 1)
    );

    for bad in [
        "?event=exploded",
        "?since=yesterday",
        "?limit=0",
        "?after=nope",
    ] {
        let response = get(bad, &reader).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    Ok(())
}

/// Inputs are kept as a hash by default; a workflow that stores them gets them redacted at
/// its JSON Pointers, and the secret never reaches the trail.
#[tokio::test]
async fn inputs_are_hashed_or_stored_redacted() -> TestResult {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("workflows.orders.audit.input", "redacted").set(
            "workflows.orders.audit.redact",
            json!(["/card/number", "/items/*/secret"]),
        )
    })
    .await?;
    let token = partners().idp.billing_token().await?;
    let input = r#"{"card":{"number":"4111111111111111","brand":"visa"},"items":[{"secret":"s1","n":1},{"secret":"s2"}],"amount":12.5}"#;
    let response = app
        .http
        .post(app.url("/v1/workflows/orders/executions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"input":{input}}}"#))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let records = app.decision_records().await?;
    let accepted = records
        .iter()
        .find(|r| r["event"] == "accepted")
        .ok_or("no accepted record")?;
    assert_eq!(
        accepted["input"],
        json!({"card": {"number": "[redacted]", "brand": "visa"},
               "items": [{"secret": "[redacted]", "n": 1}, {"secret": "[redacted]"}], "amount": 12.5})
    );
    assert_eq!(accepted["input_sha256"], sha256_hex(input.as_bytes()));
    let trail: Vec<String> = entries(&app).await?.into_iter().map(|e| e.body).collect();
    assert!(!trail.concat().contains("4111111111111111") && !trail.concat().contains("\"s1\""));
    assert_eq!(verify_json(&app, &[])?.0, 0);

    // The default keeps only the hash.
    let plain = spawn_app().await?;
    plain
        .accept(&token, &json!({"card": "4111111111111111"}))
        .await?;
    let records = plain.decision_records().await?;
    assert!(
        records.iter().all(|r| r.get("input").is_none()),
        "{records:?}"
    );
    Ok(())
}

/// The file sink down (its directory gone): records keep going to Redis, the export retries,
/// and once the directory is back the files catch up with nothing lost or doubled.
#[tokio::test]
async fn a_file_sink_outage_is_retried_without_loss() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let app = spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.files.dir", trail_dir.display().to_string())
    })
    .await?;
    let in_files = || {
        stepgate::audit::files::read_dir(&trail_dir)
            .map(|(records, _)| records.len())
            .unwrap_or(0)
    };
    add_records(&app).await?;
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the first export",
        || async { (in_files() == 5).then_some(()) },
    )
    .await;

    let away = dir.path().join("away");
    std::fs::rename(&trail_dir, &away)?;
    std::fs::write(&trail_dir, "not a directory")?;
    add_records(&app).await?;
    // A deliberate wait: the exporter must write nothing, which no condition can mark;
    // two seconds are two export rounds (`audit::export::ROUND`).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (records, _) = stepgate::audit::files::read_dir(&away)?;
    assert_eq!(records.len(), 5, "nothing exported during the outage");

    std::fs::remove_file(&trail_dir)?;
    std::fs::rename(&away, &trail_dir)?;
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the export to catch up",
        || async { (in_files() == 9).then_some(()) },
    )
    .await;
    let trail = trail_dir.display().to_string();
    let (code, report) = verify_json(&app, &["--files", &trail, "--no-redis"])?;
    assert_eq!(
        (code, &report["verified"]["records"]),
        (0, &json!(9)),
        "{report}"
    );
    Ok(())
}
