//! Refusals in the trail without letting a flood grow it: `auth_failed` and `denied` events
//! of one source are aggregated over a window.
//!
//! The source is (event kind, client address, verified issuer and subject, workflow, reason).
//! The first refusal of a source opens a window and is recorded at once, with `count` 1. The
//! repeats within the window (`audit.refusal_window_seconds`) are only counted; when the
//! window ends they become one record: the first repeat's fields, `count` = how many repeats
//! it stands for, `last_time` = the last one's time. So the `count`s of a source's records
//! add up to exactly its refusals, and a tokenless flood from one address costs two records
//! per window, however fast it comes. Every other event passes through unchanged.
//!
//! The client address counts by its IPv4 address or IPv6 /64, and the workflow only when it
//! is a configured one (the caller sets neither at will). Aggregation is per process (in
//! front of the audit writer's channel, so a flood takes no room there): N replicas write
//! up to N times as many records. Only the fixed part of a reason is part of the
//! source: a reason's quoted part echoes the token (`token type "…"`) and must not let a
//! client mint new sources.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::record::{AuditEvent, EventKind};

/// Open windows at most. A flood from more sources than this closes the oldest windows
/// early (their aggregates are written sooner), which bounds memory, never the counts.
const MAX_OPEN_WINDOWS: usize = 8_192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    kind: EventKind,
    client_addr: Option<String>,
    issuer_subject: Option<(String, String)>,
    workflow: Option<String>,
    reason: String,
}

impl Source {
    fn of(event: &AuditEvent) -> Option<Self> {
        if !RefusalAggregator::aggregates(event) {
            return None;
        }
        // An auth_failed record's issuer is the token's unverified claim: not a source.
        let issuer_subject = match (event.event, &event.issuer, &event.subject) {
            (EventKind::Denied, Some(issuer), Some(subject)) => {
                Some((issuer.clone(), subject.clone()))
            }
            _ => None,
        };
        let reason = event.reason.as_deref().unwrap_or_default();
        Some(Self {
            kind: event.event,
            client_addr: event.client_addr.as_deref().map(address_group),
            issuer_subject,
            workflow: event.workflow.clone(),
            reason: reason.split('"').next().unwrap_or(reason).to_owned(),
        })
    }
}

/// The part of a client address that names one client: an IPv4 address, an IPv6 /64 (a
/// host is typically given a whole /64, and could otherwise mint 2^64 sources).
fn address_group(addr: &str) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        _ => addr.to_owned(),
    }
}

struct Window {
    closes: Instant,
    /// The first repeat, with its `count` and `last_time` kept up to date.
    repeats: Option<AuditEvent>,
}

/// The aggregator shared by a process's [`super::AuditLog`] handles (which count refusals
/// before the writer's channel) and its writer (which writes closed windows).
///
/// Aggregates of windows closed while a refusal is taken wait in `closed` for the writer,
/// which appends them without going through its channel: a full channel can delay a
/// refusal's first record (the caller waits), never drop an aggregate.
#[derive(Clone)]
pub struct SharedRefusals(Arc<Mutex<Shared>>);

struct Shared {
    aggregator: RefusalAggregator,
    closed: Vec<AuditEvent>,
}

impl SharedRefusals {
    pub fn new(aggregator: RefusalAggregator) -> Self {
        Self(Arc::new(Mutex::new(Shared {
            aggregator,
            closed: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the caller sends to the writer now for `event` (nothing, when it only counts).
    pub fn take(&self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let shared = &mut *self.lock();
        shared
            .aggregator
            .take(event, now, &mut out, &mut shared.closed);
        out
    }

    /// When the writer must next close windows: now, if closed ones wait.
    fn next_close(&self) -> Option<Instant> {
        let shared = self.lock();
        if shared.closed.is_empty() {
            shared.aggregator.next_close()
        } else {
            Some(Instant::now())
        }
    }

    /// Returns when a window is due to close (or closed ones wait); never, with none open.
    pub async fn window_closed(&self) {
        match self.next_close() {
            Some(closes) => tokio::time::sleep_until(closes).await,
            None => std::future::pending().await,
        }
    }

    /// The aggregates to write: windows that ended by `now`, and those closed meanwhile.
    pub fn close_due(&self, now: Instant) -> Vec<AuditEvent> {
        let shared = &mut *self.lock();
        shared.aggregator.close_due(now, &mut shared.closed);
        std::mem::take(&mut shared.closed)
    }

    /// Every window's aggregate (flush, shutdown).
    pub fn close_all(&self) -> Vec<AuditEvent> {
        let shared = &mut *self.lock();
        shared.aggregator.close_all(&mut shared.closed);
        std::mem::take(&mut shared.closed)
    }
}

/// The open windows of one process.
pub struct RefusalAggregator {
    window: Duration,
    open: HashMap<Source, Window>,
    /// Sources in the order their windows opened, which (all windows being equally long)
    /// is the order they close in.
    closing_order: VecDeque<Source>,
}

impl RefusalAggregator {
    /// Aggregates over `window`; a zero window records every refusal on its own.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
            closing_order: VecDeque::new(),
        }
    }

    /// Whether `event` is of a kind that is aggregated (the others pass through unchanged).
    pub fn aggregates(event: &AuditEvent) -> bool {
        matches!(event.event, EventKind::AuthFailed | EventKind::Denied)
    }

    /// Takes one event; pushes what is to be recorded now onto `out` (the event itself, when
    /// it is not only counted) and the aggregates of windows it closes onto `closed`.
    pub fn take(
        &mut self,
        mut event: AuditEvent,
        now: Instant,
        out: &mut Vec<AuditEvent>,
        closed: &mut Vec<AuditEvent>,
    ) {
        let Some(source) = Source::of(&event) else {
            out.push(event);
            return;
        };
        event.count = Some(1);
        if self.window.is_zero() {
            out.push(event);
            return;
        }
        self.close_due(now, closed);
        if let Some(open) = self.open.get_mut(&source) {
            match &mut open.repeats {
                Some(repeats) => {
                    repeats.count = Some(repeats.count.unwrap_or(1) + 1);
                    repeats.last_time = Some(event.time);
                }
                None => {
                    event.last_time = Some(event.time.clone());
                    open.repeats = Some(event);
                }
            }
            return;
        }
        if self.open.len() >= MAX_OPEN_WINDOWS {
            self.close_oldest(closed);
        }
        self.open.insert(
            source.clone(),
            Window {
                closes: now + self.window,
                repeats: None,
            },
        );
        self.closing_order.push_back(source);
        out.push(event);
    }

    /// When the next window closes, if any is open.
    pub fn next_close(&self) -> Option<Instant> {
        let first = self.closing_order.front()?;
        self.open.get(first).map(|w| w.closes)
    }

    /// Closes the windows that ended by `now`, pushing their aggregates onto `out`.
    pub fn close_due(&mut self, now: Instant, out: &mut Vec<AuditEvent>) {
        while self.next_close().is_some_and(|closes| closes <= now) {
            self.close_oldest(out);
        }
    }

    /// Closes every window (shutdown): nothing counted is left unrecorded.
    pub fn close_all(&mut self, out: &mut Vec<AuditEvent>) {
        while !self.closing_order.is_empty() {
            self.close_oldest(out);
        }
    }

    fn close_oldest(&mut self, out: &mut Vec<AuditEvent>) {
        let Some(source) = self.closing_order.pop_front() else {
            return;
        };
        if let Some(Window {
            repeats: Some(repeats),
            ..
        }) = self.open.remove(&source)
        {
            out.push(repeats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(addr: &str, reason: &str) -> AuditEvent {
        let mut event = AuditEvent::now(EventKind::AuthFailed);
        event.client_addr = Some(addr.into());
        event.reason = Some(reason.into());
        event
    }

    fn counts(events: &[AuditEvent]) -> u64 {
        events.iter().map(|e| e.count.unwrap_or(1)).sum()
    }

    #[test]
    fn a_flood_from_one_source_is_two_records_per_window_with_exact_counts() {
        let mut aggregator = RefusalAggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        for i in 0..500u64 {
            let now = t0 + Duration::from_millis(i * 10);
            aggregator.take(
                refusal("10.0.0.1", "no bearer token"),
                now,
                &mut out,
                &mut closed,
            );
        }
        assert_eq!(out.len(), 1, "only the first is recorded at once");
        assert_eq!(out[0].count, Some(1));
        aggregator.close_due(t0 + Duration::from_secs(9), &mut out);
        assert_eq!(out.len(), 1, "the window is still open");
        aggregator.close_due(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].count, Some(499));
        assert!(out[1].last_time.is_some());
        assert_eq!(counts(&out), 500);
    }

    #[test]
    fn sources_are_kept_apart_and_quoted_parts_do_not_make_sources() {
        let mut aggregator = RefusalAggregator::new(Duration::from_secs(10));
        let now = Instant::now();
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        aggregator.take(
            refusal("10.0.0.1", "no bearer token"),
            now,
            &mut out,
            &mut closed,
        );
        aggregator.take(
            refusal("10.0.0.2", "no bearer token"),
            now,
            &mut out,
            &mut closed,
        );
        aggregator.take(
            refusal("10.0.0.1", "token is not a well-formed JWS"),
            now,
            &mut out,
            &mut closed,
        );
        for n in 0..50 {
            let reason = format!("token type \"x{n}\" is not the required one");
            aggregator.take(refusal("10.0.0.3", &reason), now, &mut out, &mut closed);
        }
        assert_eq!(out.len(), 4);
        aggregator.close_all(&mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(counts(&out), 53);
    }

    #[test]
    fn an_ipv6_client_is_one_source_per_64() {
        let mut aggregator = RefusalAggregator::new(Duration::from_secs(10));
        let now = Instant::now();
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        for n in 0..100 {
            let addr = format!("2001:db8:1:2::{n:x}");
            aggregator.take(
                refusal(&addr, "no bearer token"),
                now,
                &mut out,
                &mut closed,
            );
        }
        aggregator.take(
            refusal("2001:db8:1:3::1", "no bearer token"),
            now,
            &mut out,
            &mut closed,
        );
        aggregator.take(
            refusal("::ffff:10.0.0.1", "no bearer token"),
            now,
            &mut out,
            &mut closed,
        );
        aggregator.take(
            refusal("10.0.0.1", "no bearer token"),
            now,
            &mut out,
            &mut closed,
        );
        assert_eq!(
            out.len(),
            3,
            "one /64, another /64, one IPv4 address (mapped or not)"
        );
        aggregator.close_all(&mut out);
        assert_eq!(counts(&out), 103);
    }

    #[test]
    fn other_events_pass_and_a_zero_window_aggregates_nothing() {
        let mut aggregator = RefusalAggregator::new(Duration::ZERO);
        let now = Instant::now();
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        aggregator.take(
            AuditEvent::now(EventKind::Accepted),
            now,
            &mut out,
            &mut closed,
        );
        aggregator.take(refusal("a", "r"), now, &mut out, &mut closed);
        aggregator.take(refusal("a", "r"), now, &mut out, &mut closed);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].count, None, "accepted records carry no count");
        assert_eq!(out[2].count, Some(1));
    }

    #[test]
    fn too_many_sources_close_the_oldest_windows_early() {
        let mut aggregator = RefusalAggregator::new(Duration::from_secs(10));
        let now = Instant::now();
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        for n in 0..=MAX_OPEN_WINDOWS {
            let addr = n.to_string();
            aggregator.take(refusal(&addr, "r"), now, &mut out, &mut closed);
            aggregator.take(refusal(&addr, "r"), now, &mut out, &mut closed);
        }
        assert!(aggregator.open.len() <= MAX_OPEN_WINDOWS);
        assert!(!closed.is_empty(), "the oldest windows were closed early");
        out.append(&mut closed);
        aggregator.close_all(&mut out);
        assert_eq!(counts(&out), 2 * (MAX_OPEN_WINDOWS as u64 + 1));
    }
}
