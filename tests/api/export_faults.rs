//! The export's sink fails: the unexported backlog grows to its cap, then triggers are
//! refused (503 + Retry-After) and readiness fails; nothing unexported is dropped, and
//! admission resumes by itself once the sink takes records again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{RedisServer, TestApp, TestResult, eventually, partners, spawn_app_with};

const CAP: u64 = 150;

/// An app exporting into `trail`, once its gate knows the cap.
async fn exporting_app(trail: &Path) -> TestResult<TestApp> {
    let app = spawn_app_with(RedisServer::start(), |config| {
        config
            .set("worker.enabled", false)
            .set("audit.files.dir", trail.display().to_string())
            .set("audit.files.max_unexported_records", CAP)
            .set("audit.files.redis_keep_records", 20)
            .set("audit.checkpoint_every", 10)
    })
    .await?;
    // The replica reads the backlog every 250 ms: its first reading arms the gate (time
    // passing is what is waited for).
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(app)
}

/// Triggers until one is refused; the request ids accepted before it.
pub(crate) async fn trigger_until_refused(app: &TestApp, token: &str) -> TestResult<Vec<String>> {
    let mut accepted = Vec::new();
    for n in 0..5_000 {
        let response = app
            .trigger(
                "orders",
                token,
                &json!({"input": {"n": n, "pad": "x".repeat(200)}}),
            )
            .await?;
        match response.status() {
            StatusCode::ACCEPTED => accepted.push(crate::support::request_id_of(response).await?),
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after = crate::support::header(&response, "retry-after");
                let problem: Value = response.json().await?;
                assert_eq!(problem["code"], "unavailable", "{problem}");
                assert!(
                    retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
                    "{retry_after}"
                );
                return Ok(accepted);
            }
            other => panic!("unexpected {other}"),
        }
    }
    panic!("never refused: the backlog has no cap");
}

/// While refusing: not ready, naming the backlog, which `/metrics` exposes too; the records
/// Redis really holds unexported at (or below) the cap; and every accepted trigger's record
/// still held, in the files or in Redis.
async fn assert_held_at_the_cap(app: &TestApp, accepted: &[String]) -> TestResult {
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await?;
    let detail = body["checks"]["audit_export"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("not exported (cap {CAP})")),
        "{body}"
    );
    // (The gauge is the process's, shared by every test app here: only its presence is ours.)
    assert!(
        app.metric("stepgate_audit_unexported_records")
            .await?
            .is_some(),
        "no backlog gauge"
    );
    // Every record chained (flushed), then what the export has not taken.
    assert_every_accepted_record_is_held(app, accepted).await?;
    let mut redis = app.redis.connection().await?;
    // As the gate counts: after the export cursor (absent when the disk filled before the
    // first page landed) and after the baseline.
    let (head, (exported, baseline)): (u64, (Option<u64>, Option<u64>)) = redis::pipe()
        .cmd("HGET")
        .arg(crate::support::keys().audit_head())
        .arg("seq")
        .cmd("HMGET")
        .arg(crate::support::keys().audit_export())
        .arg("seq")
        .arg("baseline")
        .query_async(&mut redis)
        .await?;
    let unexported = head - exported.unwrap_or(0).max(baseline.unwrap_or(0));
    // Held at the cap: a record on its way into the chain when the gate read the backlog
    // may let one or two more in.
    assert!(
        (CAP..=CAP + 20).contains(&unexported),
        "{unexported} records unexported (cap {CAP})"
    );
    Ok(())
}

async fn assert_every_accepted_record_is_held(app: &TestApp, accepted: &[String]) -> TestResult {
    // Flushed first: the last triggers' records may still be on their way into the chain.
    let records = app.audit_records().await?;
    let held: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "accepted")
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !held.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "records lost: {lost:?}");
    Ok(())
}

/// Admission resumes by itself, and the whole trail (files, then Redis) verifies.
async fn assert_it_recovers(app: &TestApp, token: &str, trail: &Path) -> TestResult {
    // A failed round gives the lease up and waits 5 s before taking it again.
    eventually(Duration::from_secs(60), "admission to resume", || async {
        let response = app
            .trigger("orders", token, &json!({"input": {"after": true}}))
            .await
            .ok()?;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::OK);
    let verified = app.stepgate(&[
        "audit",
        "verify",
        "--json",
        "--files",
        &trail.display().to_string(),
    ])?;
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    Ok(())
}

/// The export's directory goes away under a running exporter (here: a file stands where it
/// was, which stops root too). Before the cap, triggers were admitted without end.
#[tokio::test]
async fn an_unwritable_export_directory_holds_the_backlog_at_its_cap() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("trail");
    let app = exporting_app(&trail).await?;
    let moved = dir.path().join("moved");
    std::fs::rename(&trail, &moved)?;
    std::fs::write(&trail, b"not a directory")?;
    let token = partners().idp.billing_token().await?;
    let accepted = trigger_until_refused(&app, &token).await?;
    assert!(
        accepted.len() as u64 >= CAP - 5,
        "{} accepted",
        accepted.len()
    );
    assert_held_at_the_cap(&app, &accepted).await?;
    std::fs::remove_file(&trail)?;
    std::fs::rename(&moved, &trail)?;
    assert_it_recovers(&app, &token, &trail).await?;
    assert_every_accepted_record_is_held(&app, &accepted).await
}

/// An export directory that cannot be written at start (a read-only configuration mount,
/// say) is refused then, naming the setting, rather than found out once Redis has filled.
#[tokio::test]
async fn serve_refuses_to_start_with_an_export_directory_it_cannot_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("trail");
    std::fs::write(&trail, b"not a directory")?;
    let started = spawn_app_with(RedisServer::start(), |config| {
        config.set("audit.files.dir", trail.display().to_string())
    })
    .await;
    let error = format!("{:#}", started.err().ok_or("it started")?);
    assert!(error.contains("audit.files.dir"), "{error}");
    Ok(())
}

/// A tmpfs mounted over the export directory for a test; unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` where this process may not mount (not root): the test says so and passes.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(at.to_owned()))
    }

    fn grow(&self, size: &str) -> TestResult {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()?;
        assert!(grown.success(), "remount failed");
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The export's disk fills up (a 96 KiB tmpfs): the backlog stops at its cap with every
/// record still in Redis, and the export catches up once the disk has room again.
#[tokio::test]
async fn a_full_disk_holds_the_backlog_at_its_cap_and_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("trail");
    let Some(disk) = SmallDisk::mount(&trail, "96k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return Ok(());
    };
    let app = exporting_app(&trail).await?;
    let token = partners().idp.billing_token().await?;
    let accepted = trigger_until_refused(&app, &token).await?;
    assert_held_at_the_cap(&app, &accepted).await?;
    disk.grow("16m")?;
    assert_it_recovers(&app, &token, &trail).await?;
    assert_every_accepted_record_is_held(&app, &accepted).await?;
    drop(app);
    Ok(())
}

/// A trail kept whole in Redis before the export was turned on is exported first, refusing
/// nothing: the cap counts only records chained after the export began (its baseline), even
/// while that catch-up is stuck (here: on a disk too small for it). Records chained after
/// the baseline still close the gate at the cap.
#[tokio::test]
async fn turning_the_export_on_over_a_long_trail_refuses_nothing_for_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trail = dir.path().join("trail");
    let Some(_disk) = SmallDisk::mount(&trail, "16k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return Ok(());
    };
    let settings = |export: bool| {
        let trail = trail.display().to_string();
        move |config: stepgate::testing::TestConfig| {
            config
                .set("worker.enabled", false)
                .set("audit.files.enabled", export)
                .set("audit.files.dir", trail)
                .set("audit.files.max_unexported_records", 20)
        }
    };
    let mut app = spawn_app_with(RedisServer::start(), settings(false)).await?;
    let token = partners().idp.billing_token().await?;
    for n in 0..60 {
        app.accept(&token, &json!({"before_export": n, "pad": "x".repeat(200)}))
            .await?;
    }
    app.stop().await;
    app.reconfigure(settings(true))?;
    app.start().await?;
    // Its first reading sets the baseline and arms the gate (time passing is waited for).
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 60 records wait for a disk that holds about 20: yet triggers are admitted...
    let accepted = trigger_until_refused(&app, &token).await?;
    // ...until 20 more than the baseline wait.
    assert!(
        (15..=25).contains(&accepted.len()),
        "{} admitted after the export was turned on",
        accepted.len()
    );
    Ok(())
}
