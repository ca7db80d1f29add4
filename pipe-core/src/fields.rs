//! [`Fields`]: the top-level fields of a request or an event, in the order they were written.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Objects with more fields than this have duplicate keys found by hashing, not by scanning.
const SCAN_LIMIT: usize = 16;

/// Keys the protocol itself uses. Parsed, they borrow these rather than allocate: nearly
/// every line carries some of them.
const PROTOCOL_KEYS: [&str; 9] = [
    "event", "id", "pid", "cmd", "text", "done", "code", "message", "state",
];

/// A field name: borrowed when it is a literal or a protocol key, owned otherwise.
type Key = Cow<'static, str>;

/// A JSON object's fields, kept in the order they were added.
///
/// Requests and events carry a handful of fields and are built, sent, parsed and dropped on
/// every round trip. A vector searched front to back does that with no hashing and, for
/// literal and protocol keys, no allocation per key; and it writes fields back out in the
/// order the sender wrote them. (Nested objects inside values are [`serde_json::Map`]s.)
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(Key, Value)>);

/// Equal when they hold the same fields, in any order, as JSON objects are.
impl PartialEq for Fields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether field `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets field `key`, in place if it exists (returning the old value), else at the end.
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// Removes field `key`, keeping the others in order.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// The fields in order, keys as stored (copying a borrowed key costs nothing).
    pub(crate) fn entries(&self) -> std::slice::Iter<'_, (Key, Value)> {
        self.0.iter()
    }

    /// Merges repeated keys as serde_json's map does: the field stays where its key first
    /// appeared and takes the last value. Linear in the number of fields for large objects,
    /// so a request with a million fields cannot make the listener scan quadratically.
    fn merge_repeated_keys(&mut self) {
        let pairs = &mut self.0;
        let first: Vec<usize> = if pairs.len() <= SCAN_LIMIT {
            let repeats =
                (1..pairs.len()).any(|i| pairs[..i].iter().any(|(k, _)| *k == pairs[i].0));
            if !repeats {
                return; // the common case, with no allocation
            }
            (0..pairs.len())
                .map(|i| {
                    pairs[..i]
                        .iter()
                        .position(|(k, _)| *k == pairs[i].0)
                        .unwrap_or(i)
                })
                .collect()
        } else {
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(pairs.len());
            pairs
                .iter()
                .enumerate()
                .map(|(i, (k, _))| *seen.entry(k.as_ref()).or_insert(i))
                .collect()
        };
        if first.iter().enumerate().all(|(i, &f)| f == i) {
            return;
        }
        for (i, &f) in first.iter().enumerate() {
            if f != i {
                pairs[f].1 = std::mem::take(&mut pairs[i].1);
            }
        }
        let mut keep = first.iter().enumerate().map(|(i, &f)| f == i);
        pairs.retain(|_| keep.next().unwrap_or(true));
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = Value;

    /// The value of field `key`; panics if it is missing, like [`serde_json::Map`].
    fn index(&self, key: &str) -> &Value {
        self.get(key)
            .unwrap_or_else(|| panic!("no field {key:?} among {self:?}"))
    }
}

impl<K: Into<Key>> FromIterator<(K, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(pairs: I) -> Self {
        let mut fields = Self::new();
        fields.extend(pairs);
        fields
    }
}

/// Like [`Fields::insert`] for each pair in turn, in time linear in the total.
impl<K: Into<Key>> Extend<(K, Value)> for Fields {
    fn extend<I: IntoIterator<Item = (K, Value)>>(&mut self, pairs: I) {
        self.0
            .extend(pairs.into_iter().map(|(key, value)| (key.into(), value)));
        self.merge_repeated_keys();
    }
}

impl IntoIterator for Fields {
    type Item = (String, Value);
    type IntoIter =
        std::iter::Map<std::vec::IntoIter<(Key, Value)>, fn((Key, Value)) -> (String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(|(k, v)| (k.into_owned(), v))
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Key, Value)>,
        fn(&'a (Key, Value)) -> (&'a str, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl From<Map<String, Value>> for Fields {
    /// A map's keys are already unique: nothing to merge.
    fn from(map: Map<String, Value>) -> Self {
        Self(map.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())
    }
}

impl From<Fields> for Map<String, Value> {
    fn from(fields: Fields) -> Self {
        fields.into_iter().collect()
    }
}

impl From<Fields> for Value {
    fn from(fields: Fields) -> Self {
        Value::Object(fields.into())
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Fields, A::Error> {
                let capacity = access.size_hint().unwrap_or(4).min(64);
                let mut fields = Fields(Vec::with_capacity(capacity));
                while let Some(key) = access.next_key_seed(KeySeed)? {
                    fields.0.push((key, access.next_value()?));
                }
                fields.merge_repeated_keys();
                Ok(fields)
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Reads a key, borrowing the protocol's own keys instead of allocating them.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match PROTOCOL_KEYS.iter().find(|known| **known == key) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(key.to_owned()),
        })
    }

    fn visit_string<E: serde::de::Error>(self, key: String) -> Result<Key, E> {
        match PROTOCOL_KEYS.iter().find(|known| **known == key) {
            Some(known) => Ok(Cow::Borrowed(known)),
            None => Ok(Cow::Owned(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Fields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keeps_the_order_written() {
        let fields = parse(r#"{"pid":1,"cmd":"x","b":2,"a":1}"#);
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["pid", "cmd", "b", "a"]);
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"pid":1,"cmd":"x","b":2,"a":1}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let small = parse(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(serde_json::to_string(&small).unwrap(), r#"{"a":3,"b":2}"#);
        let many: Vec<String> = (0..100).map(|i| format!("\"k{}\":{i}", i % 40)).collect();
        let large = parse(&format!("{{{}}}", many.join(",")));
        assert_eq!(large.len(), 40);
        assert_eq!(large.iter().next(), Some(("k0", &Value::from(80))));
        assert_eq!(large.get("k39"), Some(&Value::from(79)));
    }

    #[test]
    fn extend_sets_each_pair_like_insert() {
        let mut fields = parse(r#"{"event":"e","a":1}"#);
        fields.extend([
            ("b", Value::from(2)),
            ("a", Value::from(3)),
            ("b", Value::from(4)),
        ]);
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"event":"e","a":3,"b":4}"#
        );
        let mut large = Fields::new();
        large.extend((0..1000).map(|i| (format!("k{}", i % 500), Value::from(i))));
        assert_eq!(large.len(), 500);
        assert_eq!(large.get("k0"), Some(&Value::from(500)));
    }

    #[test]
    fn insert_replaces_in_place_and_remove_keeps_order() {
        let mut fields = parse(r#"{"a":1,"b":2,"c":3}"#);
        assert_eq!(fields.insert("b", 20), Some(Value::from(2)));
        assert_eq!(fields.remove("a"), Some(Value::from(1)));
        fields.insert("d", 4);
        assert_eq!(Value::from(fields), serde_json::json!({"b":20,"c":3,"d":4}));
    }

    #[test]
    fn equality_ignores_order() {
        assert_eq!(parse(r#"{"a":1,"b":2}"#), parse(r#"{"b":2,"a":1}"#));
        assert_ne!(parse(r#"{"a":1,"b":2}"#), parse(r#"{"a":1,"b":3}"#));
        assert_ne!(parse(r#"{"a":1}"#), parse(r#"{"a":1,"b":2}"#));
    }

    #[test]
    fn only_objects_parse() {
        assert!(serde_json::from_str::<Fields>("[1]").is_err());
        assert!(serde_json::from_str::<Fields>("\"x\"").is_err());
    }
}
