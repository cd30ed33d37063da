//! The input shape check (duplicate keys, nesting): never panics, and whatever it lets
//! through is one JSON document every reader sees alike (serde_json parses it, and writing
//! it back loses no key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepgate::policy::json_shape;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if json_shape::check(text).is_ok() {
        let value: serde_json::Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("passed the shape check but is not JSON: {e}"));
        assert_eq!(keys(&value), keys_in_text(text), "a key was lost: duplicate let through");
    }
});

/// Object keys in the parsed value.
fn keys(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(map) => map.len() + map.values().map(keys).sum::<usize>(),
        serde_json::Value::Array(items) => items.iter().map(keys).sum(),
        _ => 0,
    }
}

/// Object keys as written, counted by a streaming read that keeps every one.
fn keys_in_text(text: &str) -> usize {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("json")
        }
        fn visit_bool<E>(self, _: bool) -> Result<usize, E> { Ok(0) }
        fn visit_i64<E>(self, _: i64) -> Result<usize, E> { Ok(0) }
        fn visit_u64<E>(self, _: u64) -> Result<usize, E> { Ok(0) }
        fn visit_f64<E>(self, _: f64) -> Result<usize, E> { Ok(0) }
        fn visit_str<E>(self, _: &str) -> Result<usize, E> { Ok(0) }
        fn visit_unit<E>(self) -> Result<usize, E> { Ok(0) }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some(k) = seq.next_element_seed(Seed)? { n += k; }
            Ok(n)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while map.next_key::<IgnoredAny>()?.is_some() { n += 1 + map.next_value_seed(Seed)?; }
            Ok(n)
        }
    }
    struct Seed;
    impl<'de> serde::de::DeserializeSeed<'de> for Seed {
        type Value = usize;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> { d.deserialize_any(Count) }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(Count).unwrap_or_else(|e| panic!("passed the shape check but not countable: {e}"))
}
