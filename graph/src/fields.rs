//! Typed reading of one JSON object with errors that name the node and field,
//! and a final check that no unknown field (a typo) was left unread.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::error::{GraphError, Result};

pub struct Fields<'a> {
    node: Option<&'a str>,
    prefix: String,
    map: &'a Map<String, Value>,
    read: RefCell<BTreeSet<&'a str>>,
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Fields<'a> {
    /// Reads `value` as an object; `prefix` is the field path that leads to it.
    pub fn new(node: Option<&'a str>, prefix: &str, value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields {
                node,
                prefix: prefix.to_string(),
                map,
                read: RefCell::new(BTreeSet::new()),
            }),
            other => Err(GraphError::field(
                node,
                if prefix.is_empty() {
                    "(top level)"
                } else {
                    prefix
                },
                format!("expected an object, got {}", describe(other)),
            )),
        }
    }

    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> GraphError {
        GraphError::field(self.node, &self.path(key), message)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.map.get_key_value(key)?;
        self.read.borrow_mut().insert(k.as_str());
        match v {
            Value::Null => None,
            v => Some(v),
        }
    }

    /// "missing required field", with the likely typo if the object has one.
    pub fn missing(&self, key: &str) -> GraphError {
        let typo = self
            .map
            .keys()
            .find(|k| !self.read.borrow().contains(k.as_str()) && edit_distance(k, key) <= 2);
        match typo {
            Some(t) => self.error(
                key,
                format!("missing required field (found '{t}': a typo?)"),
            ),
            None => self.error(key, "missing required field"),
        }
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> GraphError {
        self.error(key, format!("expected {want}, got {}", describe(got)))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// A strictly positive integer.
    pub fn opt_positive(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(Some(n as usize)),
                _ => Err(self.wrong(key, "a positive integer", v)),
            },
        }
    }

    pub fn positive(&self, key: &str) -> Result<usize> {
        self.opt_positive(key)?.ok_or_else(|| self.missing(key))
    }

    /// A non-negative integer.
    pub fn opt_count(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(Some(n as usize)),
                _ => Err(self.wrong(key, "a non-negative integer", v)),
            },
        }
    }

    /// A finite number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.wrong(key, "a number", v)),
            },
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(key, "an array", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<&'a Vec<Value>> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn positive_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_u64() {
                Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
                _ => Err(self.error(
                    &format!("{key}[{i}]"),
                    format!("expected a positive integer, got {}", describe(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A nested object under `key`.
    pub fn opt_object(&self, key: &str) -> Result<Option<Fields<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Fields::new(self.node, &self.path(key), v).map(Some),
        }
    }

    /// Fails on any field that was never read: a typo must not pass silently.
    pub fn finish(&self) -> Result<()> {
        let read = self.read.borrow();
        match self.map.keys().find(|k| !read.contains(k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.error(k, "unknown field")),
        }
    }
}

/// Levenshtein distance, for typo hints on short field names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
