//! Outbox stream entries as the relay reads them: an `XRANGE` reply taken apart without
//! copying what it holds, and stream ids ordered and stepped as Redis does.

/// One outbox entry as read: its id, its event's JSON and its seal (empty when absent).
pub(super) struct OutboxEntry {
    pub id: String,
    pub event: Vec<u8>,
    pub mac: Vec<u8>,
}

/// An `XRANGE` reply's entries, their bytes taken rather than copied. A reply not shaped
/// as Redis shapes one is an error (the relay tries again), never entries passed over.
pub(super) fn outbox_entries(reply: redis::Value) -> redis::RedisResult<Vec<OutboxEntry>> {
    use redis::Value;
    let malformed = || {
        redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "an XRANGE reply not shaped as stream entries",
        ))
    };
    let Value::Array(entries) = reply else {
        return Err(malformed());
    };
    let mut read = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return Err(malformed());
        };
        let mut parts = entry.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields)), None) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let id = String::from_utf8(id).map_err(|_| malformed())?;
        let (mut event, mut mac) = (Vec::new(), Vec::new());
        let mut fields = fields.into_iter();
        loop {
            match (fields.next(), fields.next()) {
                (None, None) => break,
                (Some(Value::BulkString(name)), Some(Value::BulkString(value))) => {
                    match name.as_slice() {
                        b"event" => event = value,
                        b"mac" => mac = value,
                        _ => {}
                    }
                }
                _ => return Err(malformed()),
            }
        }
        read.push(OutboxEntry { id, event, mac });
    }
    Ok(read)
}

/// A stream entry's id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// `<ms>-<seq>`, as Redis writes ids.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// The stream id right after `id` (`<ms>-<seq+1>`): XTRIM MINID keeps it and what follows.
pub(super) fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn an_xrange_reply_is_taken_apart_or_refused_whole() -> redis::RedisResult<()> {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let entry =
            |id: &str, fields: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(fields)]);
        let reply = Value::Array(vec![
            entry(
                "1-0",
                vec![bulk("event"), bulk("{}"), bulk("mac"), bulk("k:00")],
            ),
            entry("1-1", vec![bulk("other"), bulk("x")]),
        ]);
        let read = outbox_entries(reply)?;
        assert_eq!(read.len(), 2);
        assert_eq!(
            (
                read[0].id.as_str(),
                read[0].event.as_slice(),
                read[0].mac.as_slice()
            ),
            ("1-0", &b"{}"[..], &b"k:00"[..])
        );
        assert!(read[1].event.is_empty() && read[1].mac.is_empty());
        let odd_fields = Value::Array(vec![entry("1-0", vec![bulk("event")])]);
        assert!(outbox_entries(odd_fields).is_err());
        assert!(outbox_entries(Value::Array(vec![bulk("1-0")])).is_err());
        assert!(outbox_entries(Value::Nil).is_err());
        Ok(())
    }

    #[test]
    fn the_id_after_an_entry_is_its_successor_in_the_stream() {
        assert_eq!(
            next_id("1700000000000-0").as_deref(),
            Some("1700000000000-1")
        );
        assert_eq!(next_id("5-41").as_deref(), Some("5-42"));
        assert_eq!(next_id("garbage"), None);
    }

    #[test]
    fn stream_ids_order_by_time_then_sequence_not_as_text() {
        let id = |s| StreamId::parse(s).unwrap_or_else(|| panic!("{s}"));
        assert!(id("999-5") < id("1000-0"));
        assert!(id("1000-9") < id("1000-10"));
        assert_eq!(id("7-3"), id("7-3"));
        assert_eq!(StreamId::parse("7"), None);
        assert_eq!(StreamId::parse(""), None);
    }
}
