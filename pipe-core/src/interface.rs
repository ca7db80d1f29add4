//! Self-description: each command's summary, the JSON Schema of its arguments and the events
//! it emits, as answered to `get_interface`; plus the small schema check applied to every
//! request before its handler runs, so wrong argument types get one uniform error.

use serde_json::{json, Value};

use crate::fields::Fields;
use crate::message::ToolError;
use crate::vocabulary::EventName;

/// What one command does, takes and emits.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The command name (lower case).
    pub name: String,
    /// One sentence on what it does.
    pub summary: String,
    /// JSON Schema of the request's fields (besides `pid`, `cmd` and `id`).
    pub args: Value,
    /// The events the command emits to its client.
    pub emits: Vec<EventName>,
    /// One of the commands every server answers itself (`ping`, `get_state`, ...), marked
    /// so that programs listing a server's own commands can leave them out.
    pub builtin: bool,
}

impl CommandSpec {
    /// A command taking any fields and emitting nothing declared yet.
    pub fn new(name: &str, summary: &str) -> Self {
        Self {
            name: name.to_lowercase(),
            summary: summary.into(),
            args: json!({"type": "object"}),
            emits: Vec::new(),
            builtin: false,
        }
    }

    /// Declares the arguments: a JSON Schema of `"type": "object"`.
    pub fn args(mut self, schema: Value) -> Self {
        self.args = schema;
        self
    }

    /// Declares the events the command emits.
    pub fn emits<E: Into<EventName> + Copy>(mut self, events: &[E]) -> Self {
        self.emits = events.iter().map(|&e| e.into()).collect();
        self
    }

    /// The command as it appears in `get_interface`.
    pub fn to_json(&self) -> Value {
        let mut json = json!({
            "name": self.name,
            "summary": self.summary,
            "args": self.args,
            "emits": self.emits.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        });
        if self.builtin {
            json["builtin"] = true.into();
        }
        json
    }

    /// Checks a request's fields against the declared arguments.
    pub fn check(&self, fields: &Fields) -> Result<(), ToolError> {
        check_fields(&self.name, "", &|key| fields.get(key), &self.args)
    }
}

/// Checks an object's `required` and `properties` (its `type` is known to be object). `field`
/// looks a field up: the object is a request's [`Fields`] or a nested JSON object.
fn check_fields<'v>(
    cmd: &str,
    at: &str,
    field: &dyn Fn(&str) -> Option<&'v Value>,
    schema: &Value,
) -> Result<(), ToolError> {
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if field(key).is_none_or(Value::is_null) {
            return Err(ToolError::invalid(format!(
                "{cmd}: missing required field \"{key}\""
            )));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            if let Some(v) = field(key).filter(|v| !v.is_null()) {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                check_value(cmd, &path, v, sub)?;
            }
        }
    }
    Ok(())
}

/// Checks `value` against the subset of JSON Schema cpipe uses: `type`, `properties`,
/// `required`, `items`, `enum`, `minimum`, `maximum`, `minLength`, `maxLength`.
fn check_value(cmd: &str, at: &str, value: &Value, schema: &Value) -> Result<(), ToolError> {
    let fail = |what: String| {
        let place = if at.is_empty() {
            "the request".to_string()
        } else {
            format!("\"{at}\"")
        };
        Err(ToolError::invalid(format!("{cmd}: {place} {what}")))
    };
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
            let wanted: Vec<&str> = types.iter().map(|t| type_phrase(t)).collect();
            return fail(format!(
                "must be {}, got {}",
                wanted.join(" or "),
                brief(value)
            ));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            return fail(format!(
                "must be one of {}, got {}",
                list.join(", "),
                brief(value)
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return fail(format!("must be at least {min}, got {n}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return fail(format!("must be at most {max}, got {n}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                return fail(format!("must have at least {min} characters"));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                return fail(format!("must have at most {max} characters, got {len}"));
            }
        }
    }
    if let Value::Object(fields) = value {
        check_fields(cmd, at, &|key| fields.get(key), schema)?;
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_value(cmd, &format!("{at}[{i}]"), item, item_schema)?;
        }
    }
    Ok(())
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn type_phrase(ty: &str) -> &str {
    match ty {
        "object" => "an object",
        "array" => "an array",
        "string" => "a string",
        "boolean" => "true or false",
        "number" => "a number",
        "integer" => "an integer",
        "null" => "null",
        other => other,
    }
}

fn brief(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() <= 60 {
        return s;
    }
    let cut: String = s.chars().take(57).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone().into()
    }

    fn spec() -> CommandSpec {
        CommandSpec::new("Stream", "repeat text").args(json!({
            "type": "object",
            "required": ["text"],
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 10},
                "text": {"type": "string", "minLength": 1},
                "mode": {"enum": ["a", "b"]},
                "list": {"type": "array", "items": {"type": "number"}}
            }
        }))
    }

    #[test]
    fn accepts_good_requests_and_extra_fields() {
        let s = spec();
        assert_eq!(s.name, "stream");
        s.check(&fields(
            json!({"pid": 1, "cmd": "stream", "text": "x", "n": 3, "list": [1.5]}),
        ))
        .unwrap();
    }

    #[test]
    fn names_each_problem() {
        let s = spec();
        let msg = |v| s.check(&fields(v)).unwrap_err().message;
        assert_eq!(msg(json!({})), "stream: missing required field \"text\"");
        assert_eq!(
            msg(json!({"text": "x", "n": "3"})),
            "stream: \"n\" must be an integer, got \"3\""
        );
        assert_eq!(
            msg(json!({"text": "x", "n": 11})),
            "stream: \"n\" must be at most 10, got 11"
        );
        assert!(msg(json!({"text": ""})).contains("at least 1 characters"));
        assert!(msg(json!({"text": "x", "mode": "c"})).contains("one of \"a\", \"b\""));
        assert!(
            msg(json!({"text": "x", "list": [1, "2"]})).contains("\"list[1]\" must be a number")
        );
    }
}
