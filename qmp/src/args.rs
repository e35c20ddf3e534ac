//! Reads a command's `arguments` object as QEMU's QAPI input visitor does.
//!
//! Members are taken in schema order, and the first problem is the one reported, with
//! QEMU's wording (qapi/qobject-input-visitor.c): "Parameter 'x' is missing", "Invalid
//! parameter type for 'x', expected: boolean", "Parameter 'x' does not accept value 'y'"
//! and, once every known member has been taken, "Parameter 'x' is unexpected".

use alloc::format;
use alloc::vec::Vec;

use crate::error::QmpError;
use crate::json::{Object, Value};

/// A command's arguments being taken one member at a time.
pub(crate) struct Args<'a> {
    object: &'a Object,
    taken: Vec<&'a str>,
}

type Result<T> = core::result::Result<T, QmpError>;

fn wrong_type(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!("Invalid parameter type for '{name}', expected: {expected}"))
}

fn missing(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is missing"))
}

impl<'a> Args<'a> {
    pub(crate) fn new(object: &'a Object) -> Args<'a> {
        Args { object, taken: Vec::new() }
    }

    fn take(&mut self, name: &'a str) -> Option<&'a Value> {
        let value = self.object.get(name)?;
        self.taken.push(name);
        Some(value)
    }

    pub(crate) fn opt_str(&mut self, name: &'a str) -> Result<Option<&'a str>> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => value.as_str().map(Some).ok_or_else(|| wrong_type(name, "string")),
        }
    }

    pub(crate) fn str(&mut self, name: &'a str) -> Result<&'a str> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    pub(crate) fn opt_bool(&mut self, name: &'a str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => value.as_bool().map(Some).ok_or_else(|| wrong_type(name, "boolean")),
        }
    }

    pub(crate) fn bool(&mut self, name: &'a str) -> Result<bool> {
        self.opt_bool(name)?.ok_or_else(|| missing(name))
    }

    pub(crate) fn opt_int(&mut self, name: &'a str) -> Result<Option<i64>> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or_else(|| wrong_type(name, "integer")),
        }
    }

    pub(crate) fn int(&mut self, name: &'a str) -> Result<i64> {
        self.opt_int(name)?.ok_or_else(|| missing(name))
    }

    /// An optional enum member: the index of its value in `values`.
    pub(crate) fn opt_enum(&mut self, name: &'a str, values: &[&str]) -> Result<Option<usize>> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(text) => enum_index(name, text, values).map(Some),
        }
    }

    /// An optional list of enum values (as `qmp_capabilities`'s `enable`).
    pub(crate) fn opt_enum_list(&mut self, name: &'a str, values: &[&str]) -> Result<Option<Vec<usize>>> {
        let Some(value) = self.take(name) else { return Ok(None) };
        let Value::Array(items) = value else { return Err(wrong_type(name, "array")) };
        let mut indexes = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let text = item.as_str().ok_or_else(|| wrong_type(&format!("{name}[{position}]"), "string"))?;
            // QEMU's enum visitor gets no name for list elements and prints "null".
            indexes.push(enum_index("null", text, values)?);
        }
        Ok(Some(indexes))
    }

    /// Refuses members no schema field took.
    pub(crate) fn finish(self) -> Result<()> {
        match self.object.iter().find(|(name, _)| !self.taken.contains(name)) {
            Some((name, _)) => Err(QmpError::generic(format!("Parameter '{name}' is unexpected"))),
            None => Ok(()),
        }
    }
}

fn enum_index(name: &str, text: &str, values: &[&str]) -> Result<usize> {
    values
        .iter()
        .position(|value| *value == text)
        .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' does not accept value '{text}'")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::from_slice;

    fn object(text: &str) -> Object {
        from_slice(text.as_bytes()).unwrap().as_object().unwrap().clone()
    }

    #[test]
    fn reports_qemu_wording() {
        let args = object(r#"{"force":"yes","bogus":1}"#);
        let mut reader = Args::new(&args);
        assert_eq!(reader.opt_bool("force").unwrap_err().desc, "Invalid parameter type for 'force', expected: boolean");
        let args = object(r#"{"bogus":1}"#);
        let mut reader = Args::new(&args);
        assert_eq!(reader.str("filename").unwrap_err().desc, "Parameter 'filename' is missing");
        assert_eq!(reader.finish().unwrap_err().desc, "Parameter 'bogus' is unexpected");
    }

    #[test]
    fn integers_must_be_integers() {
        let args = object(r#"{"fdset-id":1.0}"#);
        assert_eq!(
            Args::new(&args).int("fdset-id").unwrap_err().desc,
            "Invalid parameter type for 'fdset-id', expected: integer"
        );
    }

    #[test]
    fn enums_and_enum_lists() {
        let args = object(r#"{"read-only-mode":"sideways","enable":["oob",3]}"#);
        let mut reader = Args::new(&args);
        assert_eq!(
            reader.opt_enum("read-only-mode", &["retain"]).unwrap_err().desc,
            "Parameter 'read-only-mode' does not accept value 'sideways'"
        );
        assert_eq!(
            reader.opt_enum_list("enable", &["oob"]).unwrap_err().desc,
            "Invalid parameter type for 'enable[1]', expected: string"
        );
    }
}
