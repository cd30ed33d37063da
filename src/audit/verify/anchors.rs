//! What ties a trail to signatures made outside the records themselves: the trim marker
//! (where a trimmed trail starts) must be a signed checkpoint's, and a checkpoint an
//! auditor saved earlier (`audit verify --since`) must still be one the trail extends.
//!
//! Both answer attacks no chain can see from inside Redis: deleting records from the front
//! and forging the (unsigned) marker from public hashes; and cutting records off the tail
//! with their checkpoints and rewriting the head (Certificate Transparency's reason for
//! clients that keep the last signed tree head).

use super::{ChainVerifier, Problem, ProblemKind, StartPoint};
use crate::audit::checkpoint::{Checkpoint, SignedCheckpoint};

impl ChainVerifier {
    /// Holds the trail to `saved`, a checkpoint saved from it earlier: the records up to its
    /// size must have its root and head, and the trail must reach its size.
    pub fn hold_to(&mut self, saved: SignedCheckpoint) -> Result<(), Problem> {
        let size = serde_json::from_str::<Checkpoint>(&saved.body)
            .map(|c| c.size)
            .map_err(|_| inconsistent(0, "the saved checkpoint is not a checkpoint".into()))?;
        if size < self.first_seq {
            return Err(inconsistent(
                size,
                format!(
                    "the saved checkpoint covers {size} records, but Redis holds records from {} \
                     on (earlier ones were trimmed); add --files",
                    self.first_seq + 1
                ),
            ));
        }
        if size == self.first_seq {
            // The trim point itself: held against the start point.
            self.start_checkpoints.push(saved.clone());
        }
        self.since = Some((size, saved));
        self.check_since("the trim marker")
    }

    /// Checks the saved checkpoint once the records reach its size.
    pub(super) fn check_since(&mut self, location: &str) -> Result<(), Problem> {
        let Some((size, saved)) = self.since.take_if(|(size, _)| *size == self.seq) else {
            return Ok(());
        };
        let active = self.active.clone().unwrap_or_default();
        let opened = saved.open(|kid| (kid == active).then(|| self.keys.get(kid)).flatten());
        let matches = opened
            .as_ref()
            .is_ok_and(|c| c.root_hash() == Some(self.frontier.root()) && c.head == self.prev);
        if !matches {
            let why = match opened {
                Err(e) => e.to_string(),
                Ok(_) => "its root and head differ from the records'".into(),
            };
            return Err(Problem {
                location: location.to_owned(),
                ..inconsistent(
                    size,
                    format!(
                        "the trail is not consistent with the saved checkpoint of {size} records \
                         ({why}): history was rewritten since it was saved"
                    ),
                )
            });
        }
        self.consistent_with = Some(size);
        Ok(())
    }

    /// At the end: a saved checkpoint the records never reached means the tail was cut.
    pub(super) fn since_reached(&self) -> Result<(), Problem> {
        match &self.since {
            Some((size, _)) => Err(inconsistent(
                self.seq + 1,
                format!(
                    "the trail ends at record {}, but the saved checkpoint covers {size} records: \
                     records were cut off its tail since it was saved",
                    self.seq
                ),
            )),
            None => Ok(()),
        }
    }

    /// A trimmed trail's start point (the trim marker in Redis, which anyone with write
    /// access can set) must be a signed checkpoint's: its size, its root (the marker's
    /// Merkle frontier), its head (the marker's hash), signed by the key the marker names.
    /// Otherwise records could be deleted from the front and the marker forged from public
    /// data (hashes and frontier of the deleted records) without a trace.
    pub(super) fn check_start(&mut self) -> Result<(), Problem> {
        let Some(start) = self.unvouched_start.take() else {
            return Ok(());
        };
        if self.vouched(&start) {
            return Ok(());
        }
        Err(Problem {
            kind: ProblemKind::CheckpointMismatch,
            seq: start.seq,
            location: "the trim marker".into(),
            detail: format!(
                "the trim marker says records 1..={} were trimmed, but no signed checkpoint of \
                 {} records matches it (root, head and key): the marker was forged or edited, \
                 or records were deleted outside retention; verify with --files",
                start.seq, start.seq
            ),
        })
    }

    fn vouched(&self, start: &StartPoint) -> bool {
        let root = start.frontier.root();
        self.start_checkpoints.iter().any(|signed| {
            let opened = signed.open(|kid| {
                let named = start.kid.as_deref().is_none_or(|marked| marked == kid);
                named.then(|| self.keys.get(kid)).flatten()
            });
            opened.is_ok_and(|c| c.root_hash() == Some(root) && c.head == start.hash)
        })
    }
}

fn inconsistent(seq: u64, detail: String) -> Problem {
    Problem {
        kind: ProblemKind::Inconsistent,
        seq,
        location: "the saved checkpoint".into(),
        detail,
    }
}
