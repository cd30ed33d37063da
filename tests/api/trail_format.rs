//! The trail as an outsider meets it: the exported files verify with the public key alone
//! (no configuration, no Redis), survive a crash mid-write, and an independent verifier
//! written from `docs/trail-format.md` alone (`tests/trail_verify.py`) reaches stepgate's
//! verdicts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::support::{RedisServer, TestApp, TestResult, keys, spawn_app_with};

/// An app exporting its trail into `dir`, a checkpoint every two records.
async fn exporting_app(dir: &Path) -> TestResult<TestApp> {
    let trail = dir.display().to_string();
    spawn_app_with(RedisServer::start(), |config| {
        config
            .set("audit.checkpoint_every", 2)
            .set("audit.files.dir", trail)
    })
    .await
}

/// Waits until the files hold every record and every checkpoint of the trail.
async fn exported(app: &TestApp, dir: &Path) -> TestResult {
    app.audit_records().await?;
    let mut redis = app.redis.connection().await?;
    let (records, checkpoints): (u64, u64) = redis::pipe()
        .cmd("HGET")
        .arg(keys().audit_head())
        .arg("seq")
        .cmd("XLEN")
        .arg(keys().audit_checkpoints())
        .query_async(&mut redis)
        .await?;
    crate::support::eventually(Duration::from_secs(20), "the export", || async {
        let (in_files, checkpoint_lines) = stepgate::audit::files::read_dir(dir).ok()?;
        (in_files.len() as u64 >= records && checkpoint_lines.len() as u64 >= checkpoints)
            .then_some(())
    })
    .await;
    Ok(())
}

fn append(path: &Path, bytes: &[u8]) -> TestResult {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(bytes)?;
    Ok(())
}

/// `stepgate audit <args>` run as an auditor would: in a directory of their own, with no
/// configuration anywhere.
fn as_auditor(cwd: &Path, args: &[&str]) -> TestResult<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(cwd)
        .arg("audit")
        .args(args)
        .output()?)
}

/// `stepgate audit verify --json <args>` as an auditor: the exit code and the report.
fn verify_as_auditor(cwd: &Path, args: &[&str]) -> TestResult<(i32, Value)> {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    crate::audit::report_of(&as_auditor(cwd, &all)?)
}

/// A crash mid-write leaves a torn last line in the newest records file or in
/// `checkpoints.jsonl`; the exporter cuts both off when it starts again and writes their
/// records again, so the files verify on their own afterwards. (Before, a torn checkpoint
/// line counted as exported and the next checkpoint was appended onto it, for good.)
#[tokio::test]
async fn torn_last_lines_of_the_files_are_cut_and_written_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let mut app = exporting_app(&trail_dir).await?;
    app.one_of_each_decision().await?;
    exported(&app, &trail_dir).await?;
    app.stop().await;
    append(
        &trail_dir.join("checkpoints.jsonl"),
        b"{\"checkpoint\":{\"head\":\"ab",
    )?;
    let (_, newest) = stepgate::audit::files::record_files(&trail_dir)?
        .pop()
        .ok_or("no records file")?;
    append(&newest, b"{\"record\":{\"event\"")?;

    app.start().await?;
    app.one_of_each_decision().await?;
    exported(&app, &trail_dir).await?;
    let total = app.audit_records().await?.len();
    let trail = trail_dir.display().to_string();
    let (code, report) = verify_as_auditor(
        dir.path(),
        &[
            "--files",
            &trail,
            "--no-redis",
            "--public-key",
            &public_key(&app)?,
        ],
    )?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["records"], total, "{report}");
    Ok(())
}

/// An auditor holding only the exported files and the public key — no configuration, no
/// Redis, no private key — verifies the trail with stepgate itself, and saves its newest
/// checkpoint. (Before, `audit verify` always loaded a configuration, which names the
/// private keys.)
#[tokio::test]
async fn an_auditor_verifies_the_files_with_the_public_key_alone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let app = exporting_app(&trail_dir).await?;
    app.one_of_each_decision().await?;
    exported(&app, &trail_dir).await?;
    let total = app.audit_records().await?.len();

    let auditor = tempfile::tempdir()?;
    std::fs::copy(public_key(&app)?, auditor.path().join("stepgate-audit.pub"))?;
    let trail = trail_dir.display().to_string();
    let files_alone = [
        "--files",
        &trail,
        "--no-redis",
        "--public-key",
        "stepgate-audit.pub",
    ];
    let (code, report) = verify_as_auditor(auditor.path(), &files_alone)?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["records"], total, "{report}");

    let mut save = vec!["checkpoint", "--out", "last.json"];
    save.extend_from_slice(&files_alone);
    let saved = as_auditor(auditor.path(), &save)?;
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let mut since = files_alone.to_vec();
    since.extend(["--since", "last.json"]);
    let (code, report) = verify_as_auditor(auditor.path(), &since)?;
    assert_eq!(code, 0, "{report}");
    // Without a key there is nothing to verify against, and no configuration to take one
    // from: a usage error, not a verdict.
    let mut keyless = vec!["verify"];
    keyless.extend_from_slice(&files_alone[..3]);
    assert_eq!(as_auditor(auditor.path(), &keyless)?.status.code(), Some(2));
    Ok(())
}

/// The app's public key file.
fn public_key(app: &TestApp) -> TestResult<String> {
    let dir = app.config_path.parent().ok_or("no dir")?;
    Ok(dir.join("audit.pub").display().to_string())
}

/// What Redis holds of the trail, as `tests/trail_verify.py --redis-dump` reads it: the
/// record and checkpoint streams' `body`/`sig` fields in stream order, the head and the trim
/// marker hashes (`{}` when absent).
async fn dump_redis(app: &TestApp, path: &Path) -> TestResult {
    let stream = async |key: String| -> TestResult<Vec<Value>> {
        Ok(crate::audit::stream_entries(app, &key)
            .await?
            .into_iter()
            .map(|entry| json!({"body": entry.body, "sig": entry.sig}))
            .collect())
    };
    let log = stream(keys().audit_log()).await?;
    let checkpoints = stream(keys().audit_checkpoints()).await?;
    let (head, trimmed): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
        .cmd("HGETALL")
        .arg(keys().audit_head())
        .cmd("HGETALL")
        .arg(keys().audit_trimmed())
        .query_async(&mut app.redis.connection().await?)
        .await?;
    let dump = json!({"log": log, "checkpoints": checkpoints, "head": head, "trimmed": trimmed});
    std::fs::write(path, serde_json::to_vec(&dump)?)?;
    Ok(())
}

/// One source, as both verifiers are told it: stepgate's arguments and the Python
/// verifier's.
struct Source<'a> {
    name: &'a str,
    stepgate: Vec<String>,
    python: Vec<String>,
}

/// Both verifiers' verdicts on `source`: (exit code, records verified or the problem's
/// kind), stepgate's first.
async fn verdicts(
    app: &TestApp,
    source: &Source<'_>,
    keys: &[String],
) -> TestResult<((i32, Value), (i32, Value))> {
    let mut ours: Vec<&str> = source.stepgate.iter().map(String::as_str).collect();
    for key in keys {
        ours.extend(["--public-key", key.as_str()]);
    }
    let (code, report) = crate::audit::verify_json(app, &ours)?;
    let stepgate = (
        code,
        if code == 0 {
            report["verified"]["records"].clone()
        } else {
            report["problem"]["kind"].clone()
        },
    );
    let mut command = Command::new(crate::support::root().join(".venv/bin/python"));
    command
        .arg(crate::support::root().join("tests/trail_verify.py"))
        .args(&source.python);
    for key in keys {
        command.args(["--public-key", key]);
    }
    let output = command.output()?;
    let report: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{}: the Python verifier said {e}: {}{}",
            source.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let code = output.status.code().unwrap_or(-1);
    let python = (
        code,
        if code == 0 {
            report["records"].clone()
        } else {
            report["kind"].clone()
        },
    );
    Ok((stepgate, python))
}

/// A trail with a key rotation, checkpoints, rotated files and Redis trimmed behind them:
/// the independent verifier, written from `docs/trail-format.md` alone, reaches stepgate's
/// verdict on the files alone, on Redis alone and on both, clean and tampered.
#[tokio::test]
async fn an_independent_verifier_written_from_the_format_reference_agrees() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail_dir = dir.path().join("trail");
    let trail = trail_dir.display().to_string();
    let exporting = |config: stepgate::testing::TestConfig| {
        config
            .set("audit.checkpoint_every", 2)
            .set("audit.files.dir", trail.clone())
            .set("audit.files.rotate_bytes", 2000)
            .set("audit.files.redis_keep_records", 3)
    };
    let mut app = spawn_app_with(RedisServer::start(), exporting).await?;
    app.one_of_each_decision().await?;
    // A key rotation, as the README describes it.
    app.stop().await;
    let conf = app.config_path.parent().ok_or("no dir")?.to_owned();
    std::fs::rename(conf.join("audit.key"), conf.join("old.key"))?;
    std::fs::rename(conf.join("audit.pub"), conf.join("old.pub"))?;
    stepgate::audit::AuditSigner::generate().write_pair(&conf.join("audit.key"))?;
    let old_key = conf.join("old.key").display().to_string();
    app.reconfigure(|config| exporting(config).set("audit.retired_keys", json!([old_key])))?;
    app.start().await?;
    for _ in 0..2 {
        app.one_of_each_decision().await?;
    }
    exported(&app, &trail_dir).await?;
    crate::support::eventually(Duration::from_secs(20), "retention", || async {
        (trimmed_through(&app).await.ok()? > 0).then_some(())
    })
    .await;
    assert!(stepgate::audit::files::record_files(&trail_dir)?.len() >= 2);

    let dump = dir.path().join("redis.json").display().to_string();
    let anchors = [
        conf.join("old.pub").display().to_string(),
        conf.join("audit.pub").display().to_string(),
    ];
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let files_alone = Source {
        name: "files alone",
        stepgate: owned(&["--files", &trail, "--no-redis"]),
        python: owned(&["--files", &trail]),
    };
    let redis_alone = Source {
        name: "Redis alone",
        stepgate: Vec::new(),
        python: owned(&["--redis-dump", &dump]),
    };
    let both = Source {
        name: "files and Redis",
        stepgate: owned(&["--files", &trail]),
        python: owned(&["--files", &trail, "--redis-dump", &dump]),
    };
    dump_redis(&app, Path::new(&dump)).await?;
    for source in [&files_alone, &redis_alone, &both] {
        let (ours, theirs) = verdicts(&app, source, &anchors).await?;
        assert_eq!(ours.0, 0, "{}: {ours:?}", source.name);
        assert_eq!(ours, theirs, "{}", source.name);
    }

    // A trim marker moved off the checkpoint that vouches for it.
    let mut redis = app.redis.connection().await?;
    let trimmed = trimmed_through(&app).await?;
    let _: () = redis::cmd("HSET")
        .arg(keys().audit_trimmed())
        .arg("seq")
        .arg(trimmed - 1)
        .query_async(&mut redis)
        .await?;
    dump_redis(&app, Path::new(&dump)).await?;
    let (ours, theirs) = verdicts(&app, &redis_alone, &anchors).await?;
    assert_eq!(ours.0, 1, "{ours:?}");
    assert_eq!(ours, theirs, "forged trim marker");

    // One byte of a file edited, then the newest file's last line cut.
    let files = stepgate::audit::files::record_files(&trail_dir)?;
    let (_, first) = files.first().ok_or("no file")?;
    let text = std::fs::read_to_string(first)?;
    std::fs::write(first, text.replacen("\"denied\"", "\"denieD\"", 1))?;
    let (ours, theirs) = verdicts(&app, &files_alone, &anchors).await?;
    assert_eq!(ours.0, 1, "{ours:?}");
    assert_eq!(ours, theirs, "an edited byte");
    std::fs::write(first, text)?;
    let (_, newest) = files.last().ok_or("no file")?;
    let text = std::fs::read_to_string(newest)?;
    let kept = text
        .trim_end()
        .rsplit_once('\n')
        .map_or("", |(kept, _)| kept);
    std::fs::write(newest, format!("{kept}\n"))?;
    let (ours, theirs) = verdicts(&app, &files_alone, &anchors).await?;
    assert_ne!(ours.0, 0, "{ours:?}");
    assert_eq!(ours, theirs, "the last line cut");
    Ok(())
}

/// The last record deleted from Redis by retention (the trim marker's `seq`).
async fn trimmed_through(app: &TestApp) -> TestResult<u64> {
    let seq: Option<u64> = redis::cmd("HGET")
        .arg(keys().audit_trimmed())
        .arg("seq")
        .query_async(&mut app.redis.connection().await?)
        .await?;
    Ok(seq.unwrap_or(0))
}
