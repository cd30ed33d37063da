//! RFC 8785 JSON Canonicalization Scheme: the exact bytes audit records are hashed and
//! signed over, so any JCS implementation (in any language) recomputes them.
//!
//! Object members are sorted by their names' UTF-16 code units, there is no insignificant
//! whitespace, strings are escaped minimally (RFC 8785 §3.2.2.2) and numbers are written as
//! ECMAScript writes IEEE-754 doubles (§3.2.2.3): integers beyond 2^53 lose precision, as
//! they would in any JCS tool.

use serde_json::Value;

/// The canonical form of `value`.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            // Exact and cheap for the integers records mostly hold.
            (Some(int), _) if int.unsigned_abs() <= MAX_SAFE_INTEGER => {
                out.extend_from_slice(int.to_string().as_bytes());
            }
            (_, Some(float)) => write_number(float, out),
            // serde_json numbers are always representable as f64.
            (_, None) => out.extend_from_slice(b"null"),
        },
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(name, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `"`, `\` and control characters escaped (short forms where JSON has them, else `\u00xx`
/// in lower case); everything else, including non-ASCII, as UTF-8.
fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Runs of bytes that need no escape are copied whole (UTF-8 continuation bytes are
    // never below 0x20, '"' or '\\').
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// ECMAScript `Number::toString` (ECMA-262 §6.1.6.1.20) from the shortest round-tripping
/// digits, which Rust's `{:e}` formatting yields.
fn write_number(value: f64, out: &mut Vec<u8>) {
    if value == 0.0 || !value.is_finite() {
        // -0 is "0"; JSON holds no NaN or infinity.
        out.push(b'0');
        return;
    }
    if value < 0.0 {
        out.push(b'-');
    }
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.as_bytes();
    let k = digits.len() as i32;
    // value = 0.d1d2…dk × 10^n
    let n = exponent.parse::<i32>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.extend_from_slice(digits);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.extend_from_slice(&digits[..n as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if k > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if n > 0 { b'+' } else { b'-' });
        out.extend_from_slice((n - 1).unsigned_abs().to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn number(value: f64) -> String {
        let mut out = Vec::new();
        write_number(value, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn numbers_are_written_as_ecmascript_writes_them() {
        // RFC 8785 Appendix B and ECMA-262 boundary cases.
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (5e-324, "5e-324"),
            (-5e-324, "-5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (9007199254740994.0, "9007199254740994"),
            (295147905179352830000.0, "295147905179352830000"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (333333333.3333333, "333333333.3333333"),
            (4.5, "4.5"),
            (0.002, "0.002"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (1e-27, "1e-27"),
            (1.5e-7, "1.5e-7"),
            (123.456, "123.456"),
            (-1.25, "-1.25"),
        ];
        for (value, expected) in cases {
            assert_eq!(number(*value), *expected, "{value:e}");
        }
    }

    #[test]
    fn rfc_8785_example_object() {
        // RFC 8785 §3.2.3 sample input.
        let value: Value = serde_json::from_str(
            r#"{
              "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
              "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
              "literals": [null, true, false]
            }"#,
        )
        .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&canonical_json(&value)),
            "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
             \"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
    }

    #[test]
    fn members_sort_by_utf16_code_units_at_every_level() {
        let value = json!({"b": 1, "a": {"z": [true, null, "x\"y"], "c": -2}, "\u{e9}": 0, "\u{1f600}": 0, "\u{ff61}": 0});
        // U+1F600 is the surrogate pair D83D DE00, which sorts before U+FF61.
        assert_eq!(
            String::from_utf8_lossy(&canonical_json(&value)),
            "{\"a\":{\"c\":-2,\"z\":[true,null,\"x\\\"y\"]},\"b\":1,\"\u{e9}\":0,\"\u{1f600}\":0,\"\u{ff61}\":0}"
        );
    }
}
