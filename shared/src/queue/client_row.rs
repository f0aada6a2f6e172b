//! Client rows stamped as text. A client row arrives as JSON text and is stored as JSON
//! text; building a `serde_json::Value` in between (an allocation per key and per string)
//! was most of a frontend's CPU at high rates. Here the row is checked to be one JSON
//! object, and written again with `ClientId`, `_ts` and `_Source` set, every other field
//! keeping its text and its place. Rows with a repeated key take the `Value` path, whose
//! rule (first place, last value) they then follow.

use std::borrow::Cow;
use std::fmt::{self, Write};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{parse_object, stamp, JsonRow, Result};

/// A row a client sent, either parsed or as text.
pub trait ClientRow {
    /// The row as stored: `ClientId` set to the client (`client_json` is the id as a JSON
    /// string), `_ts` (`ts_s`) and `_Source` (the client id) last. `index` names the row in
    /// errors.
    fn stamp(self, client: &str, client_json: &str, ts_s: i64, index: usize) -> Result<String>;

    /// The row's own size in bytes of JSON, when it came as text: what the row size limit
    /// applies to (the server's stamps do not count).
    fn text_len(&self) -> Option<usize> {
        None
    }
}

impl ClientRow for JsonRow {
    fn stamp(mut self, client: &str, _: &str, ts_s: i64, _: usize) -> Result<String> {
        self.insert("ClientId".into(), client.into());
        Ok(stamp(&self, ts_s, client, 256))
    }
}

impl ClientRow for &str {
    fn text_len(&self) -> Option<usize> {
        Some(self.len())
    }

    fn stamp(self, client: &str, client_json: &str, ts_s: i64, index: usize) -> Result<String> {
        // Values are kept as text, unparsed: the depth limit of the API is checked here.
        super::check_depth(self, index)?;
        match serde_json::from_str::<Fields>(self) {
            Ok(fields) if !fields.has_repeated_key() => {
                Ok(fields.write(self.len(), client_json, ts_s))
            }
            // Repeated keys, or not an object: the `Value` path decides and explains.
            _ => parse_object(self, index)?.stamp(client, client_json, ts_s, index),
        }
    }
}

impl ClientRow for String {
    fn text_len(&self) -> Option<usize> {
        Some(self.len())
    }

    fn stamp(self, client: &str, client_json: &str, ts_s: i64, index: usize) -> Result<String> {
        self.as_str().stamp(client, client_json, ts_s, index)
    }
}

/// An object key: borrowed from the text when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The fields of one JSON object, values as their text.
struct Fields<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    fields.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

impl Fields<'_> {
    fn has_repeated_key(&self) -> bool {
        let keys = &self.0;
        if keys.len() <= 16 {
            return keys
                .iter()
                .enumerate()
                .any(|(i, (k, _))| keys[..i].iter().any(|(other, _)| other.0 == k.0));
        }
        let mut sorted: Vec<&str> = keys.iter().map(|(k, _)| k.0.as_ref()).collect();
        sorted.sort_unstable();
        sorted.windows(2).any(|w| w[0] == w[1])
    }

    fn write(&self, size_hint: usize, client_json: &str, ts_s: i64) -> String {
        let mut out = String::with_capacity(size_hint + 2 * client_json.len() + 48);
        out.push('{');
        let mut client_written = false;
        for (key, value) in &self.0 {
            let value = match key.0.as_ref() {
                "_ts" | "_Source" => continue,
                "ClientId" => {
                    client_written = true;
                    client_json
                }
                _ => value.get(),
            };
            if out.len() > 1 {
                out.push(',');
            }
            match &key.0 {
                // A key without escapes in the text needs none written.
                Cow::Borrowed(k) => {
                    out.push('"');
                    out.push_str(k);
                    out.push('"');
                }
                Cow::Owned(k) => out.push_str(&serde_json::to_string(k).expect("a string")),
            }
            out.push(':');
            out.push_str(value);
        }
        if out.len() > 1 {
            out.push(',');
        }
        if !client_written {
            out.push_str("\"ClientId\":");
            out.push_str(client_json);
            out.push(',');
        }
        let _ = write!(out, "\"_ts\":{ts_s},\"_Source\":");
        out.push_str(client_json);
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Error;

    fn via_text(text: &str) -> Result<String> {
        text.stamp("C.1", "\"C.1\"", 100, 3)
    }

    fn via_value(text: &str) -> String {
        let row: JsonRow = serde_json::from_str(text).unwrap();
        row.stamp("C.1", "\"C.1\"", 100, 3).unwrap()
    }

    #[test]
    fn text_stamping_gives_the_same_row_as_the_value_path() {
        for text in [
            r#"{"a":1,"b":"x"}"#,
            r#"{}"#,
            r#"{"ClientId":"C.forged","a":[1,{"b":null}],"_ts":5,"_Source":"me"}"#,
            r#"{"esc\"aped\u00e9":"v\n","n":-1.5e3}"#,
            r#"{"a":1,"a":2,"b":3}"#,
        ] {
            let fast: serde_json::Value = serde_json::from_str(&via_text(text).unwrap()).unwrap();
            let slow: serde_json::Value = serde_json::from_str(&via_value(text)).unwrap();
            assert_eq!(fast, slow, "{text}");
            // Field order too: `preserve_order` keeps it, and so must the text path.
            let keys =
                |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&fast), keys(&slow), "{text}");
        }
        assert_eq!(
            via_text(r#"{"ClientId":"x", "a" : [1, 2]}"#).unwrap(),
            r#"{"ClientId":"C.1","a":[1, 2],"_ts":100,"_Source":"C.1"}"#
        );
    }

    #[test]
    fn bad_rows_are_named_by_index() {
        let e = via_text("{oops").unwrap_err();
        assert!(matches!(e, Error::InvalidJson { index: 3, .. }), "{e}");
        let e = via_text("[1]").unwrap_err();
        assert!(
            e.to_string()
                .contains("row 3: a row must be a JSON object, got an array"),
            "{e}"
        );
        assert!(via_text(r#"{"a":1} trailing"#).is_err());
    }
}
