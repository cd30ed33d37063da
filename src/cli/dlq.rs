//! `stepgate dlq list | replay | purge`: operate a workflow's dead letters from a shell.
//! Replays and purges are audited, signed with the configured key, as done by the operator
//! running the command.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{ConfigArg, load, redis_endpoint};
use crate::audit::{AuditEvent, DeadLetterHandled};
use crate::clock::now_rfc3339;
use crate::domain::WorkflowName;
use crate::queue::Keys;
use crate::queue::dead_letters::{self, MAX_PAGE};
use crate::startup::connect_redis;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List a workflow's dead letters, oldest first (JSON Lines with `--json`).
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        workflow: String,
        /// Start after this entry id (from a previous listing).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into their queue (same request id, so never a second execution).
    Replay(Selection),
    /// Drop dead letters for good (their requests become `failed`).
    Purge(Selection),
}

#[derive(Debug, clap::Args)]
pub struct Selection {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long)]
    workflow: String,
    /// The dead letters' ids (request ids).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter of the workflow.
    #[arg(long)]
    all: bool,
}

/// Runs a `dlq` command. Exit code 1 when an id given was not a dead letter.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            config,
            workflow,
            after,
            limit,
            json,
        } => list(&config, &workflow, after.as_deref(), limit, json).await,
        DlqCommand::Replay(selection) => operate(selection, Operation::Replay).await,
        DlqCommand::Purge(selection) => operate(selection, Operation::Purge).await,
    }
}

async fn list(
    arg: &ConfigArg,
    workflow: &str,
    after: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load(arg)?;
    let workflow = WorkflowName::parse(workflow)?;
    let keys = Keys::new(&config.redis.key_prefix);
    let mut redis = connect_redis(&redis_endpoint(&config)?, Duration::from_secs(5)).await?;
    let total = dead_letters::count(&mut redis, &keys, &workflow).await?;
    let listed = dead_letters::list(
        &mut redis,
        &keys,
        &workflow,
        after,
        limit.clamp(1, MAX_PAGE),
    )
    .await?;
    for dead in &listed {
        if json {
            println!("{}", serde_json::to_string(dead)?);
        } else {
            println!(
                "{}  {}  {}  {}",
                dead.entry_id, dead.id, dead.dead_lettered_at, dead.reason
            );
        }
    }
    if !json {
        eprintln!("{} of {total} dead letter(s) of {workflow}", listed.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// How long the command waits for its operations' records to be chained.
const CHAIN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Operation {
    Replay,
    Purge,
}

async fn operate(selection: Selection, operation: Operation) -> anyhow::Result<ExitCode> {
    let config = load(&selection.config)?;
    let workflow = WorkflowName::parse(&selection.workflow)?;
    let keys = Keys::new(&config.redis.key_prefix);
    let mut redis = connect_redis(&redis_endpoint(&config)?, Duration::from_secs(5)).await?;
    let (audit, writer) = crate::audit::AuditLog::open(&config.audit, redis.clone(), keys.clone())?;
    // Relayed only once registered (the configuration may no longer name the workflow).
    crate::audit::outbox::register(&mut redis, &keys, [&workflow]).await?;
    let writing = writer.map(|writer| tokio::spawn(writer.run()));

    let ids = if selection.all {
        dead_letters::all_ids(&mut redis, &keys, &workflow).await?
    } else {
        selection.ids
    };
    let operator = super::operator::operator();
    let mut missing = 0;
    for id in &ids {
        let handled = match operation {
            Operation::Replay => DeadLetterHandled::Replayed,
            Operation::Purge => DeadLetterHandled::Purged,
        };
        // Written into the outbox by the script that moves the dead letter.
        let event = AuditEvent::dead_letter_by_cli(handled, &operator, &workflow, id);
        let sealed = audit.seal(&event);
        let (now, sealed) = (now_rfc3339(), sealed.as_ref());
        let done = match operation {
            Operation::Replay => {
                dead_letters::replay(&mut redis, &keys, &workflow, id, &now, sealed)
                    .await?
                    .is_some()
            }
            Operation::Purge => {
                dead_letters::purge(&mut redis, &keys, &workflow, id, &now, sealed).await?
            }
        };
        if !done {
            eprintln!("{id}: no such dead letter of {workflow}");
            missing += 1;
            continue;
        }
        println!("{id}: {}", handled.verb());
    }
    // Each operation's record went into the outbox with it; they are chained here before
    // the command returns, for as long as Redis lets that happen in `CHAIN_WAIT`. Past it
    // nothing is lost: any running stepgate chains them.
    let chained = tokio::time::timeout(CHAIN_WAIT, audit.flush()).await;
    drop(audit);
    match (chained, writing) {
        (Ok(Ok(())), Some(writing)) => {
            let _ = writing.await;
        }
        (Ok(Ok(())), None) => {}
        (_, writing) => {
            if let Some(writing) = writing {
                writing.abort();
            }
            eprintln!(
                "warning: the audit records of these operations are in Redis (the workflow's \
                 audit outbox) but not chained yet; a running stepgate chains them"
            );
        }
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
