//! Where `stepgate audit` reads a trail: Redis, a sink (`--files`, `--s3`), or a sink then
//! Redis.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::audit::EXIT_UNREADABLE;
use super::{ConfigArg, load, redis_endpoint};
use crate::audit::s3::{S3Error, S3Location, TrailBucket};
use crate::audit::trail::{self, ReadError, Trail};
use crate::audit::verify::{Problem, ProblemKind};
use crate::config::Config;
use crate::queue::Keys;
use crate::startup::connect_redis;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("sink").args(["files", "s3"])))]
pub struct Sources {
    #[command(flatten)]
    config: ConfigArg,
    /// Read the exported JSON Lines files in this directory (from record 1), continued by
    /// what Redis holds beyond them unless `--no-redis`.
    #[arg(long)]
    files: Option<PathBuf>,
    /// Read the trail exported to S3 (`s3://bucket/prefix/`, from record 1), continued by
    /// what Redis holds beyond it unless `--no-redis`. The AWS settings (and
    /// `audit.s3.endpoint_url`) are the configuration's, else the environment's.
    #[arg(long, value_name = "S3_URL")]
    s3: Option<String>,
    /// Leave Redis out (with `--files` or `--s3`).
    #[arg(long, requires = "sink")]
    no_redis: bool,
}

impl Sources {
    /// The configuration, unless nothing needs it: a sink alone, and no keys to take from it
    /// (`keys_from_config`). An auditor holding only the sink and the public key can then
    /// verify without the configuration, which names private keys they should not need.
    pub(super) fn config(&self, keys_from_config: bool) -> anyhow::Result<Option<Config>> {
        if self.no_redis && !keys_from_config {
            return Ok(None);
        }
        load(&self.config).map(Some)
    }
}

/// The trail, or the exit code already reported.
pub(super) async fn read(
    config: Option<&Config>,
    sources: &Sources,
) -> anyhow::Result<Result<Trail, ExitCode>> {
    match read_with(config, sources).await {
        Ok(Ok(trail)) => Ok(Ok(trail)),
        Ok(Err(problem)) => {
            println!("audit trail BROKEN at {problem}");
            Ok(Err(ExitCode::from(problem.kind.exit_code())))
        }
        Err(e) => {
            println!("audit trail UNREADABLE: {e}");
            Ok(Err(ExitCode::from(EXIT_UNREADABLE)))
        }
    }
}

/// The trail from `sources`; `config` is needed only to reach Redis.
pub(super) async fn read_with(
    config: Option<&Config>,
    sources: &Sources,
) -> Result<Result<Trail, Problem>, ReadError> {
    if sources.no_redis {
        // clap refuses `--no-redis` without a sink before this runs.
        return read_sink(config, sources).await?.map(Ok).ok_or_else(|| {
            ReadError::Redis(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "--no-redis needs --files or --s3",
            )))
        });
    }
    let Some(config) = config else {
        return Err(ReadError::Redis(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "reading Redis needs the configuration",
        ))));
    };
    let endpoint = redis_endpoint(config).map_err(|e| {
        ReadError::Redis(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid redis.url",
            e.to_string(),
        )))
    })?;
    let mut redis = connect_redis(&endpoint, Duration::from_secs(5))
        .await
        .map_err(|e| {
            ReadError::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "cannot connect",
                format!("{e:#}"),
            )))
        })?;
    let keys = Keys::new(&config.redis.key_prefix);
    let from_redis = trail::from_redis(&mut redis, &keys).await?;
    let (exported, mark): (Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.audit_export())
        .arg("seq")
        .arg("sink")
        .query_async(&mut redis)
        .await?;
    // The sink after Redis: whatever retention trimmed from Redis before that read was
    // exported first, so the two meet (read the other way, a trim in between leaves a gap).
    let Some(sink) = read_sink(Some(config), sources).await? else {
        return Ok(Ok(from_redis));
    };
    // Records the sink lost off its end would be made up for by Redis' tail, until
    // retention trims them there too: the export cursor says how far the sink went, when it
    // counts this sink (the files or this S3 prefix, as its mark says).
    let counts_this_sink = match (&sources.s3, mark.as_deref()) {
        (Some(url), Some(mark)) => {
            S3Location::parse(url).is_some_and(|at| mark.starts_with(&at.to_string()))
        }
        (Some(_), None) => false,
        (None, mark) => mark.is_none_or(|mark| mark == "files"),
    };
    let ends = sink.last_seq();
    if let Some(exported) = exported.filter(|exported| counts_this_sink && *exported > ends) {
        return Ok(Err(Problem {
            kind: ProblemKind::Truncated,
            seq: ends + 1,
            location: "end of the sink".into(),
            detail: format!(
                "the sink ends at record {ends}, but records up to {exported} were exported to \
                 it: records {}..={exported} are missing from it",
                ends + 1
            ),
        }));
    }
    Ok(trail::join(sink, from_redis))
}

/// The trail in the sink named by `--files` or `--s3`, if any.
async fn read_sink(config: Option<&Config>, sources: &Sources) -> Result<Option<Trail>, ReadError> {
    if let Some(dir) = sources.files.as_deref() {
        return Ok(Some(trail::from_files(dir)?));
    }
    let Some(url) = sources.s3.as_deref() else {
        return Ok(None);
    };
    let location = S3Location::parse(url).ok_or_else(|| {
        ReadError::S3(S3Error {
            bucket: String::new(),
            key: url.to_owned(),
            detail: "not an s3://bucket/prefix URL".into(),
        })
    })?;
    let endpoint = config
        .and_then(|config| config.audit.s3.as_ref())
        .and_then(|s3| s3.endpoint_url.as_deref());
    let bucket = TrailBucket::connect(config.map(|c| &c.aws), endpoint, location).await;
    Ok(Some(trail::from_s3(&bucket).await?))
}
