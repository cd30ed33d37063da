//! The file exporter driven directly against a real Redis: what a round reads does not grow
//! with the trail's history, two deployments never write one directory together, and an
//! exporter that lost its lease stops writing.

use std::time::Duration;

use stepgate::audit::export::{ExportSettings, Exporter, SinkSettings};
use stepgate::redis_conn::{RedisConnection, RedisEndpoint};
use tokio_util::sync::CancellationToken;

use crate::support::{RedisServer, TestResult, eventually, keys};

async fn connect(server: &RedisServer) -> TestResult<RedisConnection> {
    let endpoint = RedisEndpoint::Standalone(redis::Client::open(server.url())?);
    Ok(endpoint.connect(Duration::from_secs(5)).await?)
}

/// Records `from..=to` (bodies `{"seq":n,"tag":…}`), with a checkpoint after every `every`,
/// straight into the streams: the exporter copies lines, it does not verify them.
async fn add_trail(server: &RedisServer, tag: &str, from: u64, to: u64, every: u64) -> TestResult {
    let mut raw = server.connection().await?;
    let seqs: Vec<u64> = (from..=to).collect();
    for chunk in seqs.chunks(5_000) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            pipe.cmd("XADD")
                .arg(keys().audit_log())
                .arg("*")
                .arg("body")
                .arg(format!("{{\"seq\":{seq},\"tag\":\"{tag}\"}}"))
                .arg("sig")
                .arg("")
                .ignore();
            if seq.is_multiple_of(every) {
                let checkpoint = format!(
                    "{{\"head\":\"{:064x}\",\"kid\":\"k\",\"root\":\"{:064x}\",\"size\":{seq},\
                     \"time\":\"2026-12-07T00:00:00.000Z\",\"type\":\"checkpoint\",\"v\":1}}",
                    seq, seq
                );
                pipe.cmd("XADD")
                    .arg(keys().audit_checkpoints())
                    .arg("*")
                    .arg("body")
                    .arg(checkpoint)
                    .arg("sig")
                    .arg("")
                    .ignore();
            }
        }
        let () = pipe.query_async(&mut raw).await?;
    }
    Ok(())
}

fn lines(path: &std::path::Path) -> u64 {
    std::fs::read(path).map_or(0, |bytes| lines_in(&bytes))
}

fn lines_in(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

fn exported_records(dir: &std::path::Path) -> Vec<String> {
    stepgate::audit::files::read_dir(dir)
        .map(|(records, _)| records.into_iter().map(|r| r.body).collect())
        .unwrap_or_default()
}

/// `(bytes Redis sent, commands it ran)` so far, from `INFO`.
async fn traffic(server: &RedisServer) -> TestResult<(u64, u64)> {
    let mut raw = server.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(&mut raw)
        .await?;
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("total_net_output_bytes:"),
        field("total_commands_processed:"),
    ))
}

/// An idle round (nothing new) reads only from its cursors: what Redis sends the exporter,
/// and the commands it runs, stay the same from 1,000 to 10,000 checkpoints (a 100,000-
/// record trail, one checkpoint every 10 records). (Before, every round re-read the whole
/// checkpoint stream: about three megabytes a round at 10,000 checkpoints.)
#[tokio::test]
async fn an_idle_export_round_reads_the_same_whatever_the_history() -> TestResult {
    let server = RedisServer::start();
    let dir = tempfile::tempdir()?;
    let settings = || ExportSettings {
        sink: SinkSettings::Files {
            dir: dir.path().to_owned(),
            rotate_bytes: 1 << 30,
        },
        keep_records: 0,
    };
    add_trail(&server, "a", 1, 10_000, 10).await?;
    let shutdown = CancellationToken::new();
    let exporter = tokio::spawn(
        Exporter::new(connect(&server).await?, keys(), settings()).run(shutdown.clone()),
    );
    let checkpoints = dir.path().join(stepgate::audit::files::CHECKPOINTS_FILE);
    let exported = |n| {
        let checkpoints = checkpoints.clone();
        move || {
            let checkpoints = checkpoints.clone();
            async move { (lines(&checkpoints) == n).then_some(()) }
        }
    };
    eventually(
        Duration::from_secs(30),
        "1,000 checkpoints exported",
        exported(1_000),
    )
    .await;
    let idle_rounds = || async {
        let (bytes, commands) = traffic(&server).await?;
        // Time passing is what is measured: three idle rounds (one a second).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (bytes_after, commands_after) = traffic(&server).await?;
        TestResult::Ok((bytes_after - bytes, commands_after - commands))
    };
    let early = idle_rounds().await?;
    add_trail(&server, "a", 10_001, 100_000, 10).await?;
    eventually(
        Duration::from_secs(120),
        "10,000 checkpoints exported",
        exported(10_000),
    )
    .await;
    let late = idle_rounds().await?;
    eprintln!("idle rounds: {early:?} (bytes, commands) at 1,000 checkpoints, {late:?} at 10,000");
    // Three rounds either way (and the INFO calls measuring them): the same commands, give
    // or take one round a loaded machine fits into the window (eight commands).
    assert!(late.1 <= early.1 + 10, "commands: {early:?} then {late:?}");
    assert!(
        late.0 < 30_000 && late.0 <= early.0 + 3_000,
        "bytes: {early:?} then {late:?}"
    );
    shutdown.cancel();
    exporter.await?;
    Ok(())
}

/// Two deployments (two Redis) pointed at one directory: whichever locks it first exports,
/// the other writes nothing there — the files hold one trail, never a mix.
#[tokio::test]
async fn two_deployments_never_export_into_one_directory_together() -> TestResult {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    add_trail(&first, "first", 1, 20_000, 1_000).await?;
    add_trail(&second, "second", 1, 20_000, 1_000).await?;
    let dir = tempfile::tempdir()?;
    let settings = || ExportSettings {
        sink: SinkSettings::Files {
            dir: dir.path().to_owned(),
            rotate_bytes: 1 << 30,
        },
        keep_records: 0,
    };
    let shutdown = CancellationToken::new();
    // Started together: without the lock both find the directory empty and write into it.
    let exporters = [
        tokio::spawn(
            Exporter::new(connect(&first).await?, keys(), settings()).run(shutdown.clone()),
        ),
        tokio::spawn(
            Exporter::new(connect(&second).await?, keys(), settings()).run(shutdown.clone()),
        ),
    ];
    eventually(Duration::from_secs(30), "one trail exported", || async {
        (exported_records(dir.path()).len() >= 20_000).then_some(())
    })
    .await;
    // Rounds of both go on for a while: the second still writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = exported_records(dir.path());
    assert_eq!(records.len(), 20_000, "one trail's records, once each");
    let tags: std::collections::BTreeSet<_> = records
        .iter()
        .map(|body| body.contains("\"first\""))
        .collect();
    assert_eq!(tags.len(), 1, "the two trails were mixed in one directory");
    let mut cursors = Vec::new();
    for server in [&first, &second] {
        let mut raw = server.connection().await?;
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(keys().audit_export())
            .arg("seq")
            .query_async(&mut raw)
            .await?;
        cursors.push(seq.unwrap_or(0));
    }
    cursors.sort();
    assert_eq!(
        cursors,
        [0, 20_000],
        "only one deployment counts its trail exported"
    );
    shutdown.cancel();
    for exporter in exporters {
        exporter.await?;
    }
    Ok(())
}

/// An exporter that loses its lease mid-round — paused past its expiry during a long
/// catch-up while another replica took over — writes nothing more: the lease is renewed and
/// checked before every page, and the cursor only moves with the newest fencing token.
#[tokio::test]
async fn an_exporter_that_lost_its_lease_mid_round_writes_nothing_more() -> TestResult {
    const BACKLOG: u64 = 200_000;
    let server = RedisServer::start();
    let redis = connect(&server).await?;
    // A long backlog, without checkpoints.
    add_trail(&server, "a", 1, BACKLOG, u64::MAX).await?;
    let mut raw = server.connection().await?;
    let dir = tempfile::tempdir()?;
    let settings = || ExportSettings {
        sink: SinkSettings::Files {
            dir: dir.path().to_owned(),
            rotate_bytes: 1 << 30,
        },
        keep_records: 0,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let exporter = tokio::spawn(Exporter::new(redis, keys(), settings()).run(shutdown.clone()));
    let exported = || -> u64 {
        stepgate::audit::files::record_files(dir.path())
            .ok()
            .and_then(|files| files.first().map(|(_, path)| path.clone()))
            .and_then(|path| std::fs::read(path).ok())
            .map_or(0, |bytes| lines_in(&bytes))
    };
    // Polled tightly: the takeover must come while the round is still going.
    let first_file = || stepgate::audit::files::record_files(dir.path()).ok()?.pop();
    let started = std::time::Instant::now();
    while first_file().is_none_or(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()) == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no page exported"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Another replica takes over (as after this one's lease expired): a newer token.
    let () = redis::cmd("SET")
        .arg(keys().audit_export_lease())
        .arg("another-exporter 1000000")
        .query_async(&mut raw)
        .await?;
    let () = redis::cmd("SET")
        .arg(keys().audit_export_fence())
        .arg(1_000_000)
        .query_async(&mut raw)
        .await?;
    let at_takeover = exported();
    // Several rounds' time: at most the page already past its check is finished.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = exported();
    assert!(
        after <= at_takeover + 1_000 && after < BACKLOG,
        "{at_takeover} lines at the takeover, {after} after"
    );
    let cursor: Option<u64> = redis::cmd("HGET")
        .arg(keys().audit_export())
        .arg("seq")
        .query_async(&mut raw)
        .await?;
    assert!(cursor.unwrap_or(0) <= at_takeover, "{cursor:?}");
    shutdown.cancel();
    exporter.await?;
    let lease: Option<String> = redis::cmd("GET")
        .arg(keys().audit_export_lease())
        .query_async(&mut raw)
        .await?;
    assert_eq!(
        lease.as_deref(),
        Some("another-exporter 1000000"),
        "not ours to release"
    );
    Ok(())
}

/// Files appended just before a crash (the cursor in Redis not moved yet, a torn last line
/// behind them): the next exporter cuts the torn line and goes on after the last whole
/// record, so every record is in the files exactly once.
#[tokio::test]
async fn records_appended_just_before_a_crash_are_not_written_twice() -> TestResult {
    let server = RedisServer::start();
    add_trail(&server, "a", 1, 30, 10).await?;
    let dir = tempfile::tempdir()?;
    let crashed: Vec<u8> = (1..=12)
        .flat_map(|seq| {
            stepgate::audit::files::record_line(&format!("{{\"seq\":{seq},\"tag\":\"a\"}}"), "")
                .unwrap_or_default()
        })
        .chain(b"{\"record\":{\"seq\":13".iter().copied())
        .collect();
    std::fs::write(stepgate::audit::files::record_file(dir.path(), 1), crashed)?;
    let settings = ExportSettings {
        sink: SinkSettings::Files {
            dir: dir.path().to_owned(),
            rotate_bytes: 1 << 30,
        },
        keep_records: 0,
    };
    let shutdown = CancellationToken::new();
    let exporter = tokio::spawn(
        Exporter::new(connect(&server).await?, keys(), settings).run(shutdown.clone()),
    );
    eventually(
        Duration::from_secs(20),
        "the export to reach record 30",
        || async { (exported_records(dir.path()).len() >= 30).then_some(()) },
    )
    .await;
    shutdown.cancel();
    exporter.await?;
    let seqs: Vec<u64> = exported_records(dir.path())
        .iter()
        .filter_map(|body| serde_json::from_str::<serde_json::Value>(body).ok()?["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    Ok(())
}
