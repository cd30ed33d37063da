//! `stepgate audit verify | prove | verify-proof | checkpoints | checkpoint`.
//!
//! Exit codes of `verify`: 0 verified; 1 a record was altered, inserted, removed or moved
//! (or a checkpoint does not match, the trim marker is not a signed checkpoint's, or the
//! trail does not extend the `--since` checkpoint); 2 usage or configuration error; 3 the trail could not
//! be read; 4 records were cut off the end; 5 a record is signed by an unknown or retired
//! key. `verify-proof`: 0 valid, 1 invalid.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use ed25519_dalek::VerifyingKey;
use serde_json::json;

use super::audit_sources::{Sources, read, read_with};
use crate::audit::AuditSigner;
use crate::audit::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::audit::proof::{self, Proof};
use crate::audit::signer::load_public_key;
use crate::audit::trail::Trail;
use crate::audit::verify::{Problem, verify_records_since};
use crate::config::Config;

pub(super) const EXIT_UNREADABLE: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check records, chain, signatures, key rotations and checkpoints; names the first
    /// problem. Exit codes: 0 verified, 1 altered, 3 unreadable, 4 truncated, 5 bad key.
    Verify {
        #[command(flatten)]
        sources: Sources,
        /// The trail's first public key(s) (SPKI PEM); later keys come from its rotation
        /// records. Default: the public halves of the configured signing key and retired
        /// keys.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// A checkpoint saved earlier (`audit checkpoint --out`, a line of
        /// `checkpoints.jsonl`, or a checkpoint log line's `checkpoint` field): the trail must
        /// still extend it, or verification fails (exit 1). Catches a tail cut off with its
        /// checkpoints and the head rewritten, which Redis alone cannot show.
        #[arg(long)]
        since: Option<PathBuf>,
        /// One JSON object on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print an inclusion proof (`--record N`) or a consistency proof (`--consistency OLD
    /// NEW`, two checkpoint sizes) as JSON, for `verify-proof` or any RFC 9162 checker.
    Prove {
        #[command(flatten)]
        sources: Sources,
        #[arg(
            long,
            conflicts_with = "consistency",
            required_unless_present = "consistency"
        )]
        record: Option<u64>,
        /// Prove under the checkpoint of this size instead of the newest.
        #[arg(long, requires = "record")]
        checkpoint: Option<u64>,
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        consistency: Option<Vec<u64>>,
    },
    /// Check a proof document with public keys alone (no Redis, no configuration).
    VerifyProof {
        /// SPKI PEM public keys; the checkpoint's must be among them.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
        /// The proof (JSON); `-` reads standard input.
        proof: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the signed checkpoints.
    Checkpoints {
        #[command(flatten)]
        sources: Sources,
        #[arg(long)]
        json: bool,
    },
    /// Verify the trail, then save its newest signed checkpoint (one `checkpoints.jsonl`
    /// line), to hold the trail to it later with `audit verify --since`. Exits as `verify`
    /// does when the trail does not verify, saving nothing.
    Checkpoint {
        #[command(flatten)]
        sources: Sources,
        /// As for `verify`: the trail's first public key(s); default the configured keys.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// Where to write it; `-` for standard output.
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            sources,
            public_keys,
            since,
            json,
        } => verify(&sources, &public_keys, since.as_deref(), json).await,
        AuditCommand::Prove {
            sources,
            record,
            checkpoint,
            consistency,
        } => prove(&sources, record, checkpoint, consistency.as_deref()).await,
        AuditCommand::VerifyProof {
            public_keys,
            proof,
            json,
        } => verify_proof(&public_keys, &proof, json),
        AuditCommand::Checkpoints { sources, json } => checkpoints(&sources, json).await,
        AuditCommand::Checkpoint {
            sources,
            public_keys,
            out,
        } => save_checkpoint(&sources, &public_keys, &out).await,
    }
}

/// `audit checkpoint --out`: the newest signed checkpoint of a trail that verifies, as a
/// `checkpoints.jsonl` line (verification checked every checkpoint's signature and root
/// against the records, so an injected or stale one cannot be saved).
async fn save_checkpoint(
    sources: &Sources,
    public_keys: &[PathBuf],
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let config = sources.config(public_keys.is_empty())?;
    let keys = anchor_keys(config.as_ref(), public_keys)?;
    let trail = match read(config.as_ref(), sources).await? {
        Ok(trail) => trail,
        Err(code) => return Ok(code),
    };
    let checked = check(&trail, &keys, None);
    if let Err(problem) = checked {
        eprintln!("audit trail BROKEN at {problem}; no checkpoint saved");
        return Ok(ExitCode::from(problem.kind.exit_code()));
    }
    let newest = trail
        .checkpoints
        .iter()
        .filter_map(|signed| {
            Some((
                serde_json::from_str::<Checkpoint>(&signed.body).ok()?,
                signed,
            ))
        })
        .max_by_key(|(checkpoint, _)| checkpoint.size)
        .context("the trail has no checkpoint yet")?;
    let line = crate::audit::files::checkpoint_line(newest.1).context("malformed checkpoint")?;
    if out == Path::new("-") {
        std::io::Write::write_all(&mut std::io::stdout(), &line)?;
    } else {
        std::fs::write(out, &line).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "saved the checkpoint of {} records ({}) to {}",
            newest.0.size,
            newest.0.time,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The keys verification starts from: those given, else the configured signing and
/// retired keys' public halves.
fn anchor_keys(
    config: Option<&Config>,
    public_keys: &[PathBuf],
) -> anyhow::Result<Vec<VerifyingKey>> {
    match config {
        Some(config) if public_keys.is_empty() => configured_public_keys(config),
        _ => public_keys_from(public_keys),
    }
}

/// Verifies `trail` from `keys`, held to `since` when given.
fn check(
    trail: &Trail,
    keys: &[VerifyingKey],
    since: Option<SignedCheckpoint>,
) -> Result<crate::audit::verify::Verified, Problem> {
    verify_records_since(
        &trail.records,
        keys,
        trail.start.clone(),
        &trail.checkpoints,
        trail.head.as_ref(),
        since,
    )
}

/// A checkpoint saved earlier: a `checkpoints.jsonl` line.
fn saved_checkpoint(path: &Path) -> anyhow::Result<SignedCheckpoint> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (body, signature) = crate::audit::files::parse_line("checkpoint", text.trim())
        .with_context(|| {
            format!(
                "{}: not a saved checkpoint (one {{\"checkpoint\":{{…}},\"sig\":\"…\"}} line)",
                path.display()
            )
        })?;
    Ok(SignedCheckpoint { body, signature })
}

/// `audit prove`: an inclusion or consistency proof from the trail.
async fn prove(
    sources: &Sources,
    record: Option<u64>,
    checkpoint: Option<u64>,
    consistency: Option<&[u64]>,
) -> anyhow::Result<ExitCode> {
    let config = sources.config(false)?;
    let trail = match read(config.as_ref(), sources).await? {
        Ok(trail) => trail,
        Err(code) => return Ok(code),
    };
    if trail.start.seq > 0 {
        anyhow::bail!(
            "Redis holds records from {} on (earlier ones were trimmed); add --files or --s3",
            trail.start.seq + 1
        );
    }
    let proof = match (record, consistency) {
        (Some(seq), _) => {
            proof::prove_inclusion(&trail.records, &trail.checkpoints, seq, checkpoint)
        }
        (None, Some([old, new])) => {
            proof::prove_consistency(&trail.records, &trail.checkpoints, *old, *new)
        }
        _ => anyhow::bail!("give --record N or --consistency OLD NEW"),
    }?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(ExitCode::SUCCESS)
}

/// `audit verify-proof`: checks a proof document with the public keys alone.
fn verify_proof(public_keys: &[PathBuf], proof: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let keys = public_keys_from(public_keys)?;
    let text = if proof == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(proof).with_context(|| format!("reading {}", proof.display()))?
    };
    let proof: Proof = serde_json::from_str(&text).context("not a proof document")?;
    let checked = proof::verify_proof(&proof, &keys);
    if json {
        println!(
            "{}",
            match &checked {
                Ok(ok) => json!({"valid": true, "statement": ok.statement, "kids": ok.kids}),
                Err(e) => json!({"valid": false, "problem": e.to_string()}),
            }
        );
    } else {
        match &checked {
            Ok(ok) => println!("proof valid: {}", ok.statement),
            Err(e) => println!("proof INVALID: {e}"),
        }
    }
    Ok(if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `audit checkpoints`: the signed checkpoints, by size.
async fn checkpoints(sources: &Sources, json: bool) -> anyhow::Result<ExitCode> {
    let config = sources.config(false)?;
    let trail = match read(config.as_ref(), sources).await? {
        Ok(trail) => trail,
        Err(code) => return Ok(code),
    };
    let mut listed: Vec<Checkpoint> = trail
        .checkpoints
        .iter()
        .filter_map(|c| serde_json::from_str(&c.body).ok())
        .collect();
    listed.sort_by_key(|c| c.size);
    for checkpoint in &listed {
        if json {
            println!("{}", serde_json::to_string(checkpoint)?);
        } else {
            println!(
                "size {:>10}  root {}  {}  key {}",
                checkpoint.size, checkpoint.root, checkpoint.time, checkpoint.kid
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    sources: &Sources,
    public_keys: &[PathBuf],
    since: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = sources.config(public_keys.is_empty())?;
    let since = since.map(saved_checkpoint).transpose()?;
    let keys = anchor_keys(config.as_ref(), public_keys)?;
    let trail = match read_with(config.as_ref(), sources).await {
        Ok(Ok(trail)) => trail,
        Ok(Err(problem)) => return Ok(report(Err(problem), json)),
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "problem": {"kind": "unreadable", "detail": e.to_string()}})
                );
            } else {
                println!("audit trail UNREADABLE: {e}");
            }
            return Ok(ExitCode::from(EXIT_UNREADABLE));
        }
    };
    let checked = check(&trail, &keys, since);
    let trimmed = trail.start.seq;
    let retention = config
        .as_ref()
        .and_then(|config| config.audit.export())
        .is_some_and(|files| files.redis_keep_records > 0);
    if trimmed > 0 && !retention {
        // Not proof of tampering (retention may have been on before), but worth a look: a
        // prefix deleted exactly at a checkpoint verifies like a genuine trim.
        eprintln!(
            "note: records 1..={trimmed} were trimmed from Redis, but this configuration keeps \
             every record (audit.files is off or redis_keep_records is 0); verify with --files or --s3 to see them"
        );
    }
    Ok(report(checked.map(|v| (v, trimmed)), json))
}

fn report(checked: Result<(crate::audit::verify::Verified, u64), Problem>, json: bool) -> ExitCode {
    match checked {
        Ok((verified, trimmed)) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "verified": verified, "trimmed_before": trimmed})
                );
            } else {
                println!(
                    "audit trail verified: {} records{}, {} checkpoint(s), chain head {}{}",
                    verified.records,
                    if trimmed > 0 {
                        format!(
                            " ({}..={}; records up to {trimmed} were trimmed from Redis)",
                            trimmed + 1,
                            verified.last_seq
                        )
                    } else {
                        String::new()
                    },
                    verified.checkpoints,
                    verified.head,
                    if verified.rotations.is_empty() {
                        String::new()
                    } else {
                        format!(", key rotated to {}", verified.rotations.join(" then "))
                    }
                );
                if let Some(size) = verified.consistent_with {
                    println!("consistent with the saved checkpoint of {size} records");
                }
            }
            ExitCode::SUCCESS
        }
        Err(problem) => {
            if json {
                println!("{}", json!({"ok": false, "problem": problem}));
            } else {
                println!("audit trail BROKEN at {problem}");
            }
            ExitCode::from(problem.kind.exit_code())
        }
    }
}

/// The public halves of the configured keys: the signing key and every retired one. Any of
/// them may have signed record 1 (after a rotation, the first is a retired key); from then
/// on the verifier accepts a key only as the rotation records introduce and retire it.
fn configured_public_keys(config: &Config) -> anyhow::Result<Vec<VerifyingKey>> {
    std::iter::once(&config.audit.signing_key)
        .chain(&config.audit.retired_keys)
        .map(|path| Ok(AuditSigner::load(path)?.verifying_key()))
        .collect()
}

fn public_keys_from(paths: &[PathBuf]) -> anyhow::Result<Vec<VerifyingKey>> {
    Ok(paths
        .iter()
        .map(|path| load_public_key(path))
        .collect::<Result<_, _>>()?)
}
