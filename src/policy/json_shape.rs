//! Inputs every JSON parser reads alike: no duplicate object keys, bounded nesting.
//!
//! RFC 8259 leaves duplicate keys to the parser: serde_json keeps the last, other parsers
//! keep the first or fail. The input is checked against its JSON Schema by one parser and
//! executed by Step Functions' own, so `{"amount":1,"amount":-5}` could pass the check as one
//! document and run as another. Such an input is refused, naming the key's JSON Pointer.
//! Deep nesting is refused before any recursive reader (the schema validator, the audit's
//! canonical form) sees it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects an input may have (the input itself is level 1).
pub const MAX_DEPTH: usize = 64;

/// Why an input's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the input repeats the object key at {pointer:?}")]
    DuplicateKey {
        /// JSON Pointer of the repeated key.
        pointer: String,
    },
    #[error("the input nests deeper than {MAX_DEPTH} levels at {pointer:?}")]
    TooDeep { pointer: String },
    #[error("the input is not JSON: {0}")]
    NotJson(String),
}

/// Checks `json` (one JSON value) for duplicate keys and nesting deeper than [`MAX_DEPTH`].
pub fn check(json: &str) -> Result<(), ShapeError> {
    let found = RefCell::new(None);
    let mut path = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    // serde_json's own recursion limit (128) is above ours, so ours is met first.
    let walked = Walk {
        path: &mut path,
        depth: 0,
        found: &found,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match (walked, found.into_inner()) {
        (_, Some(shape)) => Err(shape),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(ShapeError::NotJson(e.to_string())),
    }
}

/// RFC 6901: `~` as `~0`, `/` as `~1`.
fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|token| format!("/{}", token.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// One value at `path`, `depth` containers deep. A finding is stored in `found` and the walk
/// aborted with an opaque serde error.
struct Walk<'p, 'f> {
    path: &'p mut Vec<String>,
    depth: usize,
    found: &'f RefCell<Option<ShapeError>>,
}

impl Walk<'_, '_> {
    fn abort<E: de::Error>(&self, shape: ShapeError) -> E {
        *self.found.borrow_mut() = Some(shape);
        E::custom("refused shape")
    }

    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.abort(ShapeError::TooDeep {
                pointer: pointer(self.path),
            }));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut index = 0usize;
        loop {
            self.path.push(index.to_string());
            let item = items.next_element_seed(Walk {
                path: &mut *self.path,
                depth,
                found: self.found,
            });
            self.path.pop();
            if item?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut seen = HashSet::new();
        // Keys with escapes come owned; plain ones are borrowed from the input.
        while let Some(key) = entries.next_key::<std::borrow::Cow<'de, str>>()? {
            let key = key.into_owned();
            self.path.push(key.clone());
            if !seen.insert(key) {
                let shape = ShapeError::DuplicateKey {
                    pointer: pointer(self.path),
                };
                return Err(self.abort(shape));
            }
            let value = entries.next_value_seed(Walk {
                path: &mut *self.path,
                depth,
                found: self.found,
            });
            self.path.pop();
            value?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_documents() {
        for ok in [
            "{}",
            "[]",
            "1",
            r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#,
            r#"{"a\u0062":1,"ac":2}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn names_the_duplicate_key_by_pointer() {
        let cases = [
            (r#"{"a":1,"a":2}"#, "/a"),
            (r#"{"x":[0,{"b/c":1,"b/c":2}]}"#, "/x/1/b~1c"),
            // The same key, once escaped: parsers see one name.
            (r#"{"ab":1,"a\u0062":2}"#, "/ab"),
            (r#"{"t~":{"k":1,"k":2}}"#, "/t~0/k"),
        ];
        for (json, expected) in cases {
            assert_eq!(
                check(json),
                Err(ShapeError::DuplicateKey {
                    pointer: expected.into()
                }),
                "{json}"
            );
        }
    }

    #[test]
    fn bounds_nesting() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert!(matches!(
            check(&nested(MAX_DEPTH + 1)),
            Err(ShapeError::TooDeep { .. })
        ));
        let objects = format!("{}1{}", r#"{"k":"#.repeat(65), "}".repeat(65));
        assert!(matches!(check(&objects), Err(ShapeError::TooDeep { .. })));
        // Far past serde_json's own limit: still our answer, no stack overflow.
        assert!(matches!(
            check(&nested(100_000)),
            Err(ShapeError::TooDeep { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_json() {
        assert!(matches!(check("{"), Err(ShapeError::NotJson(_))));
        assert!(matches!(check("1 2"), Err(ShapeError::NotJson(_))));
    }
}
