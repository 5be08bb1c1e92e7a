//! Which instance of a step a call is ([`StepId`]): a plain step has one;
//! a family (`#[resumable_step("index", item = repo.name)]`) has one per
//! distinct item, identified by the BLAKE3 of the item's canonical JSON.
//! Each instance has its own marker, lease and staging.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::error::RunError;
use crate::step::names::check_step_name;

/// One instance of a step: its name, and for a family, its item's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StepId {
    name: String,
    /// 64 lowercase hex digits: the BLAKE3 of the item's canonical JSON.
    item: Option<String>,
}

impl StepId {
    /// The one instance of the plain step `name`.
    ///
    /// # Errors
    /// When `name` is not a valid step name.
    pub fn plain(name: &str) -> Result<Self, RunError> {
        check_step_name(name)?;
        Ok(StepId {
            name: name.to_owned(),
            item: None,
        })
    }

    /// The instance of the family `name` for `item`, and the item as JSON
    /// (what the marker and the events record). Items are the same
    /// instance when their JSON is: maps are compared with sorted keys.
    ///
    /// # Errors
    /// When `name` is not a valid step name, or `item` does not serialise.
    pub fn item<I: Serialize + ?Sized>(name: &str, item: &I) -> Result<(Self, Value), RunError> {
        check_step_name(name)?;
        let value = serde_json::to_value(item).map_err(|source| RunError::Serialize {
            step: name.to_owned(),
            what: "item",
            source,
        })?;
        let id = StepId {
            name: name.to_owned(),
            item: Some(item_id(&value)),
        };
        Ok((id, value))
    }

    /// The instance of `name` whose item id is `id` (read back from a file
    /// name), if both are well formed.
    pub(crate) fn from_parts(name: &str, id: Option<&str>) -> Option<Self> {
        check_step_name(name).ok()?;
        if let Some(id) = id
            && !(id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return None;
        }
        Some(StepId {
            name: name.to_owned(),
            item: id.map(str::to_owned),
        })
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The item's id (hex BLAKE3 of its canonical JSON); `None` for a plain
    /// step.
    pub fn item_id(&self) -> Option<&str> {
        self.item.as_deref()
    }

    /// Whether `item` (as recorded in a marker) is this instance's item.
    pub(crate) fn is_item(&self, item: Option<&Value>) -> bool {
        match (&self.item, item) {
            (None, None) => true,
            (Some(id), Some(value)) => *id == item_id(value),
            _ => false,
        }
    }
}

/// `index` for a plain step, `index#3fa4c2…` (the id's first 12 digits)
/// for an item.
impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.item {
            None => f.write_str(&self.name),
            Some(id) => write!(f, "{}#{}…", self.name, &id[..12]),
        }
    }
}

/// The id of an item: the BLAKE3 of its canonical JSON.
fn item_id(value: &Value) -> String {
    let mut text = String::new();
    canonical(value, &mut text);
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// JSON with every map's keys sorted, whatever order the map keeps (a
/// dependency may turn on `serde_json`'s `preserve_order`).
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equal_items_are_one_instance_whatever_their_map_order() {
        let a: HashMap<&str, u32> = [("x", 1), ("y", 2), ("z", 3)].into();
        let b: HashMap<&str, u32> = [("z", 3), ("x", 1), ("y", 2)].into();
        let (ia, va) = StepId::item("index", &a).unwrap();
        let (ib, _) = StepId::item("index", &b).unwrap();
        assert_eq!(ia, ib);
        assert!(ia.is_item(Some(&va)));
        let (other, vo) = StepId::item("index", &("x", 1)).unwrap();
        assert_ne!(ia, other);
        assert!(!ia.is_item(Some(&vo)));
        assert!(!ia.is_item(None));
        assert!(StepId::plain("index").unwrap().is_item(None));
    }

    #[test]
    fn canonical_json_sorts_nested_maps() {
        let v = serde_json::json!({"b": [1, {"d": 1, "c": 2}], "a": "x"});
        let mut text = String::new();
        canonical(&v, &mut text);
        assert_eq!(text, r#"{"a":"x","b":[1,{"c":2,"d":1}]}"#);
    }

    #[test]
    fn ids_read_back_from_names_are_checked() {
        let (id, _) = StepId::item("index", &7).unwrap();
        let hex = id.item_id().unwrap();
        assert_eq!(StepId::from_parts("index", Some(hex)), Some(id.clone()));
        assert_eq!(StepId::from_parts("index", Some("abc")), None);
        assert_eq!(StepId::from_parts("in dex", Some(hex)), None);
        assert_eq!(StepId::from_parts("index", Some(&hex.to_uppercase())), None);
        assert!(id.to_string().starts_with("index#"));
    }
}
