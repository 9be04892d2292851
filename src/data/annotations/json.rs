//! A JSON tree that keeps object keys in the order written. VIA's "first region
//! attribute is the label" and the order of images both depend on it, and
//! `serde_json::Value` sorts keys unless a crate-wide feature is switched on.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses text; serde_json's nesting limit keeps hostile input from exhausting the stack.
    pub(super) fn parse(text: &str) -> Result<Json, String> {
        Self::parse_skipping(text, &[])
    }

    /// Parses text, checking but not keeping the values of keys in `skip` at any
    /// depth: COCO segmentation polygons can be most of a file and are not needed
    /// for boxes.
    pub(super) fn parse_skipping(text: &str, skip: &'static [&'static str]) -> Result<Json, String> {
        Self::parse_limited(text, skip, MAX_JSON_VALUES)
    }

    /// [`Self::parse_skipping`], refusing text of more than `max_values` values (skipped ones
    /// do not count: they are never built).
    fn parse_limited(text: &str, skip: &'static [&'static str], max_values: usize) -> Result<Json, String> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let left = Cell::new(max_values);
        JsonSeed { skip, left: &left, max_values }
            .deserialize(&mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value))
            .map_err(|e| {
                // Too many values is no syntax error.
                let text = e.to_string();
                if text.starts_with("the file holds more than") { text } else { format!("not valid JSON: {text}") }
            })
    }

    /// The first value under `key` of an object.
    pub(super) fn get(&self, key: &str) -> Option<&Json> {
        self.as_object()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(super) fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(fields) => Some(fields),
            _ => None,
        }
    }

    pub(super) fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// A finite number, also when written as a numeric string: some exporters quote
    /// numbers.
    pub(super) fn as_number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64().filter(|v| v.is_finite()),
            Json::String(s) => super::parse_number(s),
            _ => None,
        }
    }

    /// An identifier (COCO ids) as text, so that 7, 7.0 and "7" are the same id.
    pub(super) fn as_id(&self) -> Option<String> {
        match self {
            Json::Number(n) => {
                if let Some(v) = n.as_u64() {
                    Some(v.to_string())
                } else if let Some(v) = n.as_i64() {
                    Some(v.to_string())
                } else {
                    let v = n.as_f64()?;
                    // Whole floats only, and only where f64 is exact.
                    (v.fract() == 0.0 && v.abs() < 9.0e15).then(|| (v as i64).to_string())
                }
            }
            Json::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        }
    }

    /// The value as short text for an error message.
    pub(super) fn brief(&self) -> String {
        let text = match self {
            Json::Null => "null".to_owned(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::String(s) => format!("{s:?}"),
            Json::Array(_) => "an array".to_owned(),
            Json::Object(_) => "an object".to_owned(),
        };
        if text.chars().count() > 40 { format!("{}…", text.chars().take(40).collect::<String>()) } else { text }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// The most values one JSON annotation file may hold. Each takes 32 bytes in the tree (more
/// for strings, arrays and objects), so text of a few bytes a value, like `[[],[],…]`, would
/// otherwise grow tenfold in memory. A COCO file of 64 MiB without its segmentations holds
/// well under this.
pub(super) const MAX_JSON_VALUES: usize = 8_000_000;

/// Builds a [`Json`], leaving out the values of the keys in `skip`; `left` counts down the
/// values that may still be built.
#[derive(Clone, Copy)]
struct JsonSeed<'b> {
    skip: &'static [&'static str],
    left: &'b Cell<usize>,
    max_values: usize,
}

impl JsonSeed<'_> {
    fn count<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get() {
            0 => Err(E::custom(format!("the file holds more than {} values", self.max_values))),
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        self.count()?;
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        self.count()?;
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        self.count()?;
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        self.count()?;
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        self.count()?;
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        self.count()?;
        Ok(Json::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        self.count()?;
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        self.count()?;
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        self.count()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        self.count()?;
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.skip.contains(&key.as_str()) {
                map.next_value::<IgnoredAny>()?;
            } else {
                let value = map.next_value_seed(self)?;
                fields.push((key, value));
            }
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_reads_values() {
        let json = Json::parse(r#"{"z": 1, "a": [true, null, "x"], "m": {"k": 2.5}}"#).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        assert_eq!(json.get("z").and_then(Json::as_number), Some(1.0));
        assert_eq!(json.get("m").and_then(|m| m.get("k")).and_then(Json::as_number), Some(2.5));
        assert_eq!(
            json.get("a").and_then(Json::as_array),
            Some(&[Json::Bool(true), Json::Null, Json::String("x".into())][..])
        );
        assert_eq!(json.get("missing"), None);
    }

    #[test]
    fn ids_compare_as_text() {
        for text in ["7", "7.0", "\"7\"", "\" 7 \""] {
            assert_eq!(Json::parse(text).unwrap().as_id(), Some("7".to_owned()), "{text}");
        }
        assert_eq!(Json::parse("-3").unwrap().as_id(), Some("-3".to_owned()));
        assert_eq!(Json::parse("7.5").unwrap().as_id(), None);
        assert_eq!(Json::parse("null").unwrap().as_id(), None);
        assert_eq!(Json::parse("\"\"").unwrap().as_id(), None);
    }

    #[test]
    fn skipped_keys_are_left_out_at_any_depth() {
        let json = Json::parse_skipping(r#"{"a": [{"seg": [[1, 2]], "b": 1}], "seg": 3}"#, &["seg"]).unwrap();
        assert_eq!(
            json,
            Json::Object(vec![(
                "a".into(),
                Json::Array(vec![Json::Object(vec![("b".into(), Json::Number(1.into()))])])
            )])
        );
        // Skipped values must still be valid JSON, and nothing may follow the value.
        assert!(Json::parse_skipping(r#"{"seg": [1, }"#, &["seg"]).is_err());
        assert!(Json::parse_skipping(r#"{"a": 1} x"#, &[]).is_err());
    }

    #[test]
    fn the_number_of_values_is_bounded() {
        // An object, an array and three numbers are five values; the skipped list is not built.
        let text = r#"{"a": [1, 2, 3], "seg": [[1, 2, 3, 4, 5, 6]]}"#;
        assert!(Json::parse_limited(text, &["seg"], 5).is_ok());
        let err = Json::parse_limited(text, &["seg"], 4).unwrap_err();
        assert!(err.contains("the file holds more than 4 values"), "{err}");
        let empties = format!("[{}[]]", "[],".repeat(1000));
        assert!(Json::parse_limited(&empties, &[], 1002).is_ok());
        assert!(Json::parse_limited(&empties, &[], 1001).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(Json::parse(&deep).is_err());
    }
}
