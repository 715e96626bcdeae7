//! Reading script replies and ledger hashes by field name.
//!
//! Every Lua script of this module that returns more than one value returns a flat
//! `{name, value, name, value, ...}` array, read here into a map, so Lua and Rust agree on
//! names rather than on array positions. Flat pairs rather than `cjson.encode`: a Lua `false`
//! keeps its slot as a RESP nil, so a value Redis does not hold (`None`) stays apart from a
//! field the script never sent (an error naming it), and values keep their RESP types; cjson
//! drops nil fields, encodes an empty Lua table (no ledgers) as an object, and numbers as
//! doubles with 14 significant digits. A ledger hash (`HGETALL`) has the same shape, so one
//! reader serves both; the worker entrypoint reads the repair reply the same way.

use super::ProtocolError;
use redis::Value;
use std::collections::HashMap;
use std::fmt::Display;

/// A `{name, value, ...}` reply, by name.
#[derive(Debug)]
pub(crate) struct Fields {
    /// What the reply is, for errors: "the snapshot script's reply", "ledger …".
    reply: String,
    values: HashMap<String, Value>,
}

impl Fields {
    /// Reads `value`, a flat array of names and values; `reply` names it in errors.
    pub(crate) fn parse(reply: impl Into<String>, value: Value) -> Result<Fields, ProtocolError> {
        let reply = reply.into();
        let Value::Array(items) = value else {
            return Err(ProtocolError::ScriptReply {
                reply,
                detail: format!("is {value:?}, not a list of names and values"),
            });
        };
        if items.len() % 2 != 0 {
            return Err(ProtocolError::ScriptReply {
                reply,
                detail: format!("has {} items, not pairs of a name and a value", items.len()),
            });
        }
        let mut values = HashMap::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            let Some(name) = text(&name, format_args!("a field name in {reply}"))? else {
                return Err(ProtocolError::ScriptReply {
                    reply,
                    detail: "has a field without a name".into(),
                });
            };
            values.insert(name, value);
        }
        Ok(Fields { reply, values })
    }

    /// The value of field `name`, which must be there (it may be nil).
    fn required(&self, name: &str) -> Result<&Value, ProtocolError> {
        self.values.get(name).ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> ProtocolError {
        ProtocolError::ScriptReply {
            reply: self.reply.clone(),
            detail: format!("has no field {name:?}"),
        }
    }

    /// Takes the value of field `name` out, e.g. a nested list; it must be there.
    pub(crate) fn take(&mut self, name: &str) -> Result<Value, ProtocolError> {
        self.values.remove(name).ok_or_else(|| self.missing(name))
    }

    /// Field `name` as text (`None` for nil); `what` names the value in errors (formatted only
    /// then: every live run's snapshot is read every few seconds).
    pub(crate) fn text(
        &self,
        name: &str,
        what: impl Display,
    ) -> Result<Option<String>, ProtocolError> {
        text(self.required(name)?, what)
    }

    /// Field `name` as an integer (`None` for nil); `what` names the value in errors.
    pub(crate) fn integer(
        &self,
        name: &str,
        what: impl Display,
    ) -> Result<Option<i64>, ProtocolError> {
        integer_value(self.required(name)?, what)
    }

    /// Field `name` as text, `None` when it is not there: for hashes, whose fields come and go.
    pub(crate) fn optional_text(
        &self,
        name: &str,
        what: impl Display,
    ) -> Result<Option<String>, ProtocolError> {
        match self.values.get(name) {
            Some(value) => text(value, what),
            None => Ok(None),
        }
    }

    /// Field `name` as an integer, `None` when it is not there.
    pub(crate) fn optional_integer(
        &self,
        name: &str,
        what: impl Display,
    ) -> Result<Option<i64>, ProtocolError> {
        match self.values.get(name) {
            Some(value) => integer_value(value, what),
            None => Ok(None),
        }
    }

    /// Every field, in no particular order.
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (String, Value)> {
        self.values.into_iter()
    }
}

/// Reads a text value out of a script reply.
pub(crate) fn text(value: &Value, what: impl Display) -> Result<Option<String>, ProtocolError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => String::from_utf8(bytes.clone())
            .map(Some)
            .map_err(|_| ProtocolError::NotPyabc(format!("{what} is not UTF-8 text"))),
        Value::SimpleString(s) => Ok(Some(s.clone())),
        Value::Int(i) => Ok(Some(i.to_string())),
        other => Err(ProtocolError::NotPyabc(format!(
            "{what}: unexpected reply {other:?}"
        ))),
    }
}

/// Reads an integer value out of a script reply (Redis keeps them as text), without copying it.
fn integer_value(value: &Value, what: impl Display) -> Result<Option<i64>, ProtocolError> {
    match value {
        Value::Int(i) => Ok(Some(*i)),
        Value::BulkString(bytes) => match std::str::from_utf8(bytes) {
            Ok(raw) => integer(Some(raw), what),
            Err(_) => Err(ProtocolError::NotPyabc(format!("{what} is not UTF-8 text"))),
        },
        other => integer(text(other, &what)?.as_deref(), what),
    }
}

/// Parses an integer pyABC or the ledger keeps, naming the key when it is something else.
pub(crate) fn integer(
    value: Option<&str>,
    what: impl Display,
) -> Result<Option<i64>, ProtocolError> {
    value
        .map(|raw| {
            raw.trim().parse::<i64>().map_err(|_| {
                ProtocolError::NotPyabc(format!("{what} holds {raw:?}, expected an integer"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fields_are_read_by_name_and_a_missing_one_is_named() {
        let reply = Value::Array(vec![
            bulk("b"),
            Value::Int(2),
            bulk("a"),
            Value::Nil,
            bulk("c"),
            bulk("x"),
        ]);
        let fields = Fields::parse("the test script's reply", reply).unwrap();
        assert_eq!(fields.integer("b", "b").unwrap(), Some(2));
        assert_eq!(fields.text("a", "a").unwrap(), None, "nil is no value");
        assert_eq!(fields.optional_text("gone", "gone").unwrap(), None);
        let err = fields.text("gone", "gone").unwrap_err().to_string();
        assert!(
            err.contains("the test script's reply has no field \"gone\""),
            "{err}"
        );
        let err = fields.integer("c", "key c_ana_1").unwrap_err().to_string();
        assert!(err.contains("key c_ana_1 holds \"x\""), "{err}");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let odd = Value::Array(vec![bulk("a"), Value::Int(1), bulk("b")]);
        let err = Fields::parse("r", odd).unwrap_err().to_string();
        assert!(err.contains("r has 3 items"), "{err}");
        assert!(Fields::parse("r", Value::Int(3)).is_err());
        let unnamed = Value::Array(vec![Value::Nil, Value::Int(1)]);
        assert!(Fields::parse("r", unnamed).is_err());
    }

    #[test]
    fn integers_name_the_key() {
        assert_eq!(integer(Some("42"), "k").unwrap(), Some(42));
        assert_eq!(integer(None, "k").unwrap(), None);
        let err = integer(Some("abc"), "key n_req_x_0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n_req_x_0") && err.contains("\"abc\""),
            "{err}"
        );
    }
}
