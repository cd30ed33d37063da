//! The trail as an outsider meets it: the exported files verify with the public key alone
//! (no configuration, no Redis), survive a crash mid-write, and an independent verifier
//! written from `docs/trail-format.md` alone (`tests/trail_verify.py`) reaches stepgate's
//! verdicts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

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

/// Waits until the files hold every record and every checkpoint Redis holds.
async fn exported(app: &TestApp, dir: &Path) -> TestResult {
    app.audit_records().await?;
    let mut redis = app.redis.connection().await?;
    let (records, checkpoints): (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(keys().audit_log())
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
    let output = as_auditor(cwd, &all)?;
    let report = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.code().unwrap_or(-1), report))
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
