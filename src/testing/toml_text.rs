//! Writes a tree of settings as TOML, in the shape an operator writes by hand: values first,
//! then `[tables]`, then `[[lists of tables]]`. Only what a configuration holds is covered:
//! strings, whole numbers, booleans, lists and tables (no floats or dates).

use std::fmt::Write;

use serde_json::{Map, Value};

/// Writes `table`, found at `path`, and everything under it.
pub(super) fn write_table(out: &mut String, path: &[&str], table: &Map<String, Value>) {
    for (key, value) in table {
        // TOML has no null: a null setting is left out, as if never set.
        if !value.is_null() && !is_table(value) && !is_table_list(value) {
            let _ = writeln!(out, "{} = {}", key_text(key), inline(value));
        }
    }
    for (key, value) in table {
        let inner = [path, &[key.as_str()]].concat();
        if let Value::Object(child) = value {
            let _ = writeln!(out, "\n[{}]", dotted(&inner));
            write_table(out, &inner, child);
        }
    }
    for (key, value) in table {
        let inner = [path, &[key.as_str()]].concat();
        if let (true, Value::Array(items)) = (is_table_list(value), value) {
            for item in items.iter().filter_map(Value::as_object) {
                let _ = writeln!(out, "\n[[{}]]", dotted(&inner));
                write_table(out, &inner, item);
            }
        }
    }
}

fn is_table(value: &Value) -> bool {
    value.is_object()
}

/// A non-empty list of tables only: written as `[[key]]` blocks.
fn is_table_list(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| !items.is_empty() && items.iter().all(Value::is_object))
}

fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|part| key_text(part))
        .collect::<Vec<_>>()
        .join(".")
}

/// A bare key where TOML allows one, else a quoted one.
fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        basic_string(key)
    }
}

/// A TOML basic string: JSON's escapes are a subset of TOML's, and JSON escapes every
/// control character but DEL, which TOML also forbids unescaped.
fn basic_string(text: &str) -> String {
    Value::from(text).to_string().replace('\u{7f}', "\\u007F")
}

/// A value on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(table) => {
            let members: Vec<String> = table
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| format!("{} = {}", key_text(key), inline(value)))
                .collect();
            format!("{{ {} }}", members.join(", "))
        }
        // A null inside a list cannot be left out without changing the list: a test bug.
        #[allow(clippy::panic)]
        Value::Null => panic!("TOML has no null, and a list cannot leave one out"),
        Value::String(text) => basic_string(text),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_come_before_tables_and_lists_of_tables_after() {
        let tree = json!({
            "top": 1,
            "server": {"listen": "127.0.0.1:0", "odd key": "a\"b\\c", "del\u{7f}key": 1},
            "issuers": [{"issuer": "x", "audiences": ["a", "b"], "introspection": {"client_id": "c"}}],
            "rate": {"per_caller": {"requests": 4, "per_seconds": 60}},
            "empty": [],
            "mixed": [{"a": 1}, 2],
            "unset": null,
            "inline": [{"kept": 1, "gone": null}, 2],
            "del": "a\u{7f}b",
        });
        let Value::Object(root) = tree else {
            unreachable!("an object literal")
        };
        let mut out = String::new();
        write_table(&mut out, &[], &root);
        let parsed: toml_edit::DocumentMut = out.parse().unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(parsed["top"].as_integer(), Some(1));
        assert_eq!(parsed["server"]["odd key"].as_str(), Some("a\"b\\c"));
        assert_eq!(
            parsed["issuers"][0]["introspection"]["client_id"].as_str(),
            Some("c")
        );
        assert_eq!(
            parsed["rate"]["per_caller"]["per_seconds"].as_integer(),
            Some(60)
        );
        assert!(out.contains("empty = []"), "{out}");
        assert!(out.contains("mixed = [{ a = 1 }, 2]"), "{out}");
        assert!(parsed.get("unset").is_none(), "{out}");
        assert_eq!(parsed["inline"][0]["kept"].as_integer(), Some(1));
        assert!(parsed["inline"][0].get("gone").is_none(), "{out}");
        assert_eq!(parsed["del"].as_str(), Some("a\u{7f}b"));
        assert_eq!(parsed["server"]["del\u{7f}key"].as_integer(), Some(1));
    }
}
