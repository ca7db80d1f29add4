//! named-pipes 0.7's interface descriptions, both ways. A 0.7 server names the interfaces it
//! implements (`list_interfaces` → `["base", "chat"]`) and describes each on request
//! (`get_interface {"name": ...}`): commands with typed arguments (`str`, `int`, `float`,
//! `bool`, `list`, `dict`, free strings rather than JSON Schema) and the events it sends.
//!
//! A cpipe server answers in that shape from its [`CommandSpec`]s, so the description never
//! drifts from what the server checks: `base` is the built-in commands, and the server's own
//! commands form one interface named after its kind. The other way, [`command_from_named`]
//! turns a 0.7 command into cpipe's `get_interface` form (arguments as JSON Schema), so
//! cpipe's own tools (`cpipe mcp`) can drive a 0.7 server's commands with checked arguments.

use serde_json::{json, Map, Value};

use crate::interface::CommandSpec;
use crate::vocabulary::EventName;

/// The interface of the built-in commands every server answers.
pub const BASE: &str = "base";

/// One interface in 0.7's shape: `{"name","description","commands","events"}`. Its events are
/// those its commands emit, then `broadcasts`, each once.
pub fn describe(
    name: &str,
    description: &str,
    commands: &[&CommandSpec],
    broadcasts: &[EventName],
) -> Value {
    let mut events: Vec<EventName> = Vec::new();
    for event in commands.iter().flat_map(|c| &c.emits).chain(broadcasts) {
        if !events.iter().any(|e| e.as_str() == event.as_str()) {
            events.push(*event);
        }
    }
    json!({
        "name": name,
        "description": description,
        "commands": commands.iter().map(|c| command(c)).collect::<Vec<_>>(),
        "events": events.iter().map(|e| json!({
            "name": e.as_str(),
            "description": e.description(),
            "fields": [],
        })).collect::<Vec<_>>(),
    })
}

/// A command in 0.7's shape: its arguments are the JSON Schema's properties.
fn command(spec: &CommandSpec) -> Value {
    let properties = spec.args.get("properties").and_then(Value::as_object);
    let required = |name: &str| {
        spec.args
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|n| n == name))
    };
    let args: Vec<Value> = properties
        .into_iter()
        .flatten()
        .map(|(name, property)| {
            json!({
                "name": name,
                "description": property.get("description").and_then(Value::as_str).unwrap_or(""),
                "type": named_type(property),
                "required": required(name),
                "default": property.get("default").map(|d| match d {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            })
        })
        .collect();
    json!({"name": spec.name, "description": spec.summary, "args": args})
}

/// 0.7's type name for a JSON Schema property. A property that may be a string is `str`, so a
/// form that sends typed text as is (0.7's dashboard does) can fill it.
fn named_type(property: &Value) -> &'static str {
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"string") {
        return "str";
    }
    match types.first().copied() {
        Some("integer") => "int",
        Some("number") => "float",
        Some("boolean") => "bool",
        Some("array") => "list",
        Some("object") => "dict",
        _ => "object",
    }
}

/// A 0.7 command (`{"name","description","args":[{"name","description","type","required",
/// "default"}]}`) in the form of cpipe's `get_interface` commands: `name`, `summary`, `args` as
/// a JSON Schema, `emits` (unknown: empty). `None` if it has no name.
pub fn command_from_named(command: &Value) -> Option<Value> {
    let name = command.get("name")?.as_str()?;
    let mut properties = Map::new();
    let mut required = Vec::new();
    for arg in command
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(arg_name) = arg.get("name").and_then(Value::as_str) else {
            continue;
        };
        let kind = arg.get("type").and_then(Value::as_str).unwrap_or("str");
        let mut property = Map::new();
        if let Some(schema_type) = schema_type(kind) {
            property.insert("type".into(), schema_type.into());
        }
        if let Some(text) = arg.get("description").and_then(Value::as_str) {
            property.insert("description".into(), text.into());
        }
        if let Some(default) = arg.get("default").and_then(Value::as_str) {
            // 0.7 writes every default as text; a typed one is JSON text.
            let value = match kind {
                "str" => Value::from(default),
                _ => serde_json::from_str(default).unwrap_or_else(|_| default.into()),
            };
            property.insert("default".into(), value);
        }
        // An argument with a default can be left out, whatever `required` says.
        if arg.get("required").and_then(Value::as_bool).unwrap_or(true)
            && arg.get("default").is_none_or(Value::is_null)
        {
            required.push(Value::from(arg_name));
        }
        properties.insert(arg_name.into(), property.into());
    }
    let mut args = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        args["required"] = required.into();
    }
    Some(json!({
        "name": name,
        "summary": command.get("description").and_then(Value::as_str).unwrap_or(""),
        "args": args,
        "emits": [],
    }))
}

/// The JSON Schema type of a 0.7 type name; `None` (anything) for names it does not define.
fn schema_type(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "str" => "string",
        "int" => "integer",
        "float" => "number",
        "bool" => "boolean",
        "list" => "array",
        "dict" => "object",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::ProtocolEvent;

    fn spec() -> CommandSpec {
        CommandSpec::new("speak", "Says something.")
            .args(
                json!({"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string", "description": "What to say."},
                    "times": {"type": "integer", "default": 1},
                    "stop": {"type": ["string", "array"]},
                }}),
            )
            .emits(&[ProtocolEvent::Pong])
    }

    #[test]
    fn a_command_spec_reads_as_a_named_interface() {
        let spec = spec();
        let described = describe(
            "demo",
            "A demo.",
            &[&spec],
            &[ProtocolEvent::StateChanged.into()],
        );
        let command = &described["commands"][0];
        assert_eq!(command["name"], "speak");
        assert_eq!(command["description"], "Says something.");
        let args = command["args"].as_array().unwrap();
        let arg = |n: &str| args.iter().find(|a| a["name"] == n).unwrap().clone();
        assert_eq!(
            arg("text"),
            json!({"name": "text", "description": "What to say.", "type": "str",
                   "required": true, "default": null})
        );
        assert_eq!(arg("times")["type"], "int");
        assert_eq!(arg("times")["default"], "1");
        assert_eq!(arg("stop")["type"], "str");
        let events: Vec<&str> = described["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["pong", "state_changed"]);
        assert_eq!(
            described["events"][0]["description"],
            "The answer to `ping`."
        );
    }

    #[test]
    fn a_named_command_reads_as_a_json_schema() {
        let named = json!({"name": "chat", "description": "Stream a reply.", "args": [
            {"name": "messages", "description": "Messages.", "type": "list",
             "required": true, "default": "[{\"role\":\"user\", \"content\":\"Hello!\"}]"},
            {"name": "device", "description": "A device.", "type": "str", "required": true},
            {"name": "frames", "description": "A tensor.", "type": "tensor", "required": false},
        ]});
        let command = command_from_named(&named).unwrap();
        assert_eq!(command["summary"], "Stream a reply.");
        let args = &command["args"];
        assert_eq!(args["required"], json!(["device"]));
        assert_eq!(args["properties"]["messages"]["type"], "array");
        assert_eq!(
            args["properties"]["messages"]["default"],
            json!([{"role": "user", "content": "Hello!"}])
        );
        assert_eq!(args["properties"]["device"]["type"], "string");
        assert!(args["properties"]["frames"].get("type").is_none());
        assert_eq!(command_from_named(&json!({"args": []})), None);
    }
}
