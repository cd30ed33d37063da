//! The trail as S3 objects under a prefix, as CloudTrail delivers its log files: segments
//! `<prefix>records/<first seq, 20 digits>.jsonl` hold records in order, one line each, and
//! `<prefix>checkpoints/<size, 20 digits>.json` one signed checkpoint each; the lines are
//! the files' lines (`files.rs`). Every object is written once, never replaced
//! (`If-None-Match: *`), and with `object_lock_days` under Object Lock in compliance mode.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};

use super::checkpoint::SignedCheckpoint;
use super::files::parse_line;
use super::store::StoredRecord;
use crate::config::{AuditS3Config, AwsConfig};

/// An S3 call that takes longer has failed; within it, an attempt that takes longer than
/// `ATTEMPT_TIMEOUT` is retried (the SDK's standard retries). A segment of the default size
/// (a few MB) goes up well within an attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a trail lives: `s3://<bucket>/<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// `s3://bucket/prefix/` (a prefix without its trailing `/` gets one).
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return None;
        }
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Some(Self {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    pub fn record_key(&self, first_seq: u64) -> String {
        format!("{}records/{first_seq:020}.jsonl", self.prefix)
    }

    /// `s3://bucket/key` of a key under this location's bucket.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    pub fn checkpoint_key(&self, size: u64) -> String {
        format!("{}checkpoints/{size:020}.json", self.prefix)
    }

    fn records(&self) -> String {
        format!("{}records/", self.prefix)
    }

    fn checkpoints(&self) -> String {
        format!("{}checkpoints/", self.prefix)
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("s3://{bucket}/{key}: {detail}")]
pub struct S3Error {
    pub bucket: String,
    pub key: String,
    /// What the SDK said (never credentials: the SDK's errors do not carry them).
    pub detail: String,
}

/// Whether a write made a new object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    /// An object already had this key; it was left as it is.
    Exists,
}

/// A client for one trail's objects.
#[derive(Clone)]
pub struct TrailBucket {
    client: Client,
    pub location: S3Location,
}

impl TrailBucket {
    /// A client with the shared AWS configuration (`aws`; without it, the environment's),
    /// at `endpoint_url` when given (an S3-compatible store or an emulator, path-style).
    pub async fn connect(
        aws: Option<&AwsConfig>,
        endpoint_url: Option<&str>,
        location: S3Location,
    ) -> Self {
        let shared = match aws {
            Some(aws) => crate::aws_sdk::sdk_config(aws).await,
            None => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
        };
        let mut config = aws_sdk_s3::config::Builder::from(&shared).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
        let endpoint = endpoint_url.or(shared.endpoint_url());
        if let Some(endpoint) = endpoint {
            // Emulators and most S3-compatible stores do not resolve `<bucket>.<host>`.
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        Self {
            client: Client::from_conf(config.build()),
            location,
        }
    }

    /// From `[audit.s3]`.
    pub async fn from_config(aws: &AwsConfig, s3: &AuditS3Config) -> Self {
        let location = S3Location {
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone(),
        };
        Self::connect(Some(aws), s3.endpoint_url.as_deref(), location).await
    }

    fn error(&self, key: &str, detail: impl std::fmt::Display) -> S3Error {
        S3Error {
            bucket: self.location.bucket.clone(),
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// Writes `body` at `key` unless an object is there already; under Object Lock until
    /// `retain_days` from now, when given.
    pub async fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        retain_days: Option<u32>,
    ) -> Result<Put, S3Error> {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .if_none_match("*")
            // Object Lock writes need an integrity checksum; it is worth having anyway.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(body));
        if let Some(days) = retain_days {
            let until = SystemTime::now() + Duration::from_secs(u64::from(days) * 86_400);
            put = put
                .object_lock_mode(ObjectLockMode::Compliance)
                .object_lock_retain_until_date(DateTime::from(until));
        }
        match put.send().await {
            Ok(_) => Ok(Put::Written),
            // 412: the key is taken. (A 409, a conditional write racing another, is an error:
            // that write may yet fail, and the round is retried.)
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => Ok(Put::Exists),
            Err(e) => Err(self.error(key, DisplayErrorContext(e))),
        }
    }

    /// What start-up can tell of the bucket: `Err` for what no retry mends (no such bucket;
    /// Object Lock wanted but not enabled on it), `Ok(Some(doubt))` when it could not tell
    /// (S3 unreachable, access refused: the exporter retries, and the backlog's cap holds
    /// meanwhile), `Ok(None)` when ready.
    pub async fn check(&self, object_lock: bool) -> Result<Option<S3Error>, S3Error> {
        let bucket = &self.location.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                return Err(self.error("", "no such bucket"));
            }
            Err(e) => return Ok(Some(self.error("", DisplayErrorContext(e)))),
        }
        if !object_lock {
            return Ok(None);
        }
        let lock = self
            .client
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await;
        let enabled = match lock {
            Ok(lock) => lock
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled"),
            Err(e)
                if e.as_service_error().and_then(|e| e.meta().code())
                    == Some("ObjectLockConfigurationNotFoundError") =>
            {
                false
            }
            Err(e) => return Ok(Some(self.error("", DisplayErrorContext(e)))),
        };
        if enabled {
            Ok(None)
        } else {
            Err(self.error(
                "",
                "Object Lock is not enabled on this bucket (audit.s3.object_lock_days needs a \
                 bucket created with it)",
            ))
        }
    }

    /// The object at `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        let got = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await;
        let output = match got {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.error(key, DisplayErrorContext(e))),
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    /// The key of the last segment whose first seq lies in `from..=to`: one bounded listing
    /// (from `from`, it stops past `to`).
    pub async fn last_segment_from(&self, from: u64, to: u64) -> Result<Option<String>, S3Error> {
        let prefix = self.location.records();
        let last_key = self.location.record_key(to);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(&prefix)
            .start_after(self.location.record_key(from.saturating_sub(1)))
            .into_paginator()
            .send();
        let mut found = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(&prefix, DisplayErrorContext(e)))?;
            for key in page.contents().iter().filter_map(|o| o.key()) {
                if key > last_key.as_str() {
                    return Ok(found);
                }
                found = Some(key.to_owned());
            }
        }
        Ok(found)
    }

    /// The keys under `prefix`, in key order (so segments by first seq).
    async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(prefix, DisplayErrorContext(e)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// Every record and checkpoint under the prefix. Both listings come before any read,
    /// checkpoints first: a checkpoint object is written after the segments it covers, so
    /// every checkpoint read is over records read, while the exporter goes on. A line that
    /// is not a record becomes a record with an empty body, so verification names its
    /// object and line. A prefix without records is an error (a mistyped prefix would
    /// otherwise verify as an empty trail).
    pub async fn read_trail(&self) -> Result<(Vec<StoredRecord>, Vec<SignedCheckpoint>), S3Error> {
        let checkpoint_keys = self.list(&self.location.checkpoints()).await?;
        let record_keys = self.list(&self.location.records()).await?;
        if record_keys.is_empty() {
            return Err(self.error(&self.location.records(), "no records here"));
        }
        let mut records = Vec::new();
        for key in record_keys {
            let text = self.text(&key).await?;
            for (i, raw) in text.lines().enumerate() {
                let (body, signature) = parse_line("record", raw).unwrap_or_default();
                records.push(StoredRecord {
                    location: format!("{} line {}", self.location.url(&key), i + 1),
                    body,
                    signature,
                });
            }
        }
        let mut checkpoints = Vec::new();
        for key in checkpoint_keys {
            let text = self.text(&key).await?;
            for raw in text.lines() {
                let (body, signature) = parse_line("checkpoint", raw).unwrap_or_default();
                checkpoints.push(SignedCheckpoint { body, signature });
            }
        }
        Ok((records, checkpoints))
    }

    /// An object that was listed, as text: gone since, it is empty, and bytes that are not
    /// UTF-8 become malformed lines (verification reports both as the trail broken).
    async fn text(&self, key: &str) -> Result<String, S3Error> {
        let bytes = self.get(key).await?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_their_objects() {
        let at = S3Location::parse("s3://trail/prod/stepgate").unwrap();
        assert_eq!(at.bucket, "trail");
        assert_eq!(at.prefix, "prod/stepgate/");
        assert_eq!(at.to_string(), "s3://trail/prod/stepgate/");
        assert_eq!(
            at.record_key(42),
            "prod/stepgate/records/00000000000000000042.jsonl"
        );
        assert_eq!(
            at.checkpoint_key(250),
            "prod/stepgate/checkpoints/00000000000000000250.json"
        );
        let bare = S3Location::parse("s3://trail").unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(S3Location::parse("s3:///x"), None);
        assert_eq!(S3Location::parse("/tmp/trail"), None);
    }
}
