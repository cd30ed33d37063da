//! The entries this process is delivering now. A reader restarted by a reload re-reads its
//! consumer's pending entries while the old reader's deliveries may still be mid-call, and
//! the reclaim may hand this process an entry it holds: an entry already in flight here is
//! not delivered a second time (for an EXPRESS state machine, that would be a second
//! execution).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::domain::WorkflowName;

type Entry = (WorkflowName, String);

#[derive(Default)]
pub struct InFlight {
    entries: Mutex<HashSet<Entry>>,
}

/// One entry held in flight; leaving it (dropping this) lets it be delivered again.
pub struct Held {
    set: Arc<InFlight>,
    entry: Entry,
}

impl InFlight {
    /// Holds `entry_id` of `workflow` in flight, unless a delivery here already does.
    pub fn enter(self: &Arc<Self>, workflow: &WorkflowName, entry_id: &str) -> Option<Held> {
        let entry = (workflow.clone(), entry_id.to_owned());
        let mut entries = self.entries.lock().ok()?;
        entries.insert(entry.clone()).then(|| Held {
            set: Arc::clone(self),
            entry,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.set.entries.lock() {
            entries.remove(&self.entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_in_flight_once_until_its_delivery_ends() {
        let set = Arc::new(InFlight::default());
        let orders = WorkflowName::parse("orders").unwrap_or_else(|e| panic!("{e}"));
        let held = set.enter(&orders, "1-0");
        assert!(held.is_some());
        assert!(set.enter(&orders, "1-0").is_none(), "twice at once");
        assert!(set.enter(&orders, "2-0").is_some(), "another entry");
        drop(held);
        assert!(set.enter(&orders, "1-0").is_some(), "again once it ended");
    }
}
