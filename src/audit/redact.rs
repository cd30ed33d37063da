//! What of a trigger's input its audit records keep: by default only the SHA-256 (inputs
//! may hold personal data, and the trail is kept for years); a workflow may store the input
//! itself with the values at configured JSON Pointers replaced by `"[redacted]"`.

use serde::Deserialize;
use serde_json::Value;

pub const REDACTED: &str = "[redacted]";

/// `[workflows.<name>.audit]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputAudit {
    /// `hash` (default): only `input_sha256`; `redacted`: also `input`, redacted.
    #[serde(default)]
    pub input: InputRecording,
    /// RFC 6901 JSON Pointers to redact (with `redacted`); a `*` segment stands for every
    /// element of an array or member of an object, e.g. `/items/*/card_number`.
    #[serde(default)]
    pub redact: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputRecording {
    #[default]
    Hash,
    Redacted,
}

impl InputAudit {
    /// Pointers that are not JSON Pointers.
    pub fn invalid_pointers(&self) -> Vec<&str> {
        self.redact
            .iter()
            .filter(|p| !p.starts_with('/'))
            .map(String::as_str)
            .collect()
    }

    /// The input as its records keep it: `None` unless stored, redacted.
    pub fn stored(&self, raw_input: &str) -> Option<Value> {
        if self.input != InputRecording::Redacted {
            return None;
        }
        let mut input: Value = serde_json::from_str(raw_input).ok()?;
        for pointer in &self.redact {
            let segments: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            redact(&mut input, &segments);
        }
        Some(input)
    }
}

fn redact(value: &mut Value, segments: &[String]) {
    let Some((first, rest)) = segments.split_first() else {
        *value = Value::String(REDACTED.to_owned());
        return;
    };
    match value {
        Value::Object(members) if first == "*" => {
            members.values_mut().for_each(|v| redact(v, rest));
        }
        Value::Array(items) if first == "*" => items.iter_mut().for_each(|v| redact(v, rest)),
        Value::Object(members) => {
            if let Some(v) = members.get_mut(first) {
                redact(v, rest);
            }
        }
        Value::Array(items) => {
            if let Some(v) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                redact(v, rest);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_pointed_values_are_replaced() {
        let audit = InputAudit {
            input: InputRecording::Redacted,
            redact: vec![
                "/customer/email".into(),
                "/items/*/card".into(),
                "/a~1b".into(),
                "/absent/path".into(),
            ],
        };
        let input = r#"{"customer": {"email": "x@example.com", "id": 7},
            "items": [{"card": "4111", "n": 1}, {"card": "5500"}], "a/b": true, "n": 1.5}"#;
        assert_eq!(
            audit.stored(input),
            Some(json!({"customer": {"email": REDACTED, "id": 7},
                "items": [{"card": REDACTED, "n": 1}, {"card": REDACTED}], "a/b": REDACTED, "n": 1.5}))
        );
        assert_eq!(
            InputAudit::default().stored(input),
            None,
            "hash only by default"
        );
    }
}
