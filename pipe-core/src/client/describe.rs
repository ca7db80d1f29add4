//! What a server offers, whichever library it runs on: its commands in the form of cpipe's
//! `get_interface` answer (`description`, `commands` with JSON Schema `args`), read from a cpipe
//! server directly or assembled from a named-pipes 0.7 server's named interfaces.

use serde_json::{json, Value};

use super::Client;
use crate::error::{Error, Result};
use crate::named_interface;
use crate::vocabulary::ProtocolEvent;

impl Client {
    /// The server's commands as cpipe's `get_interface` answers them; a named-pipes 0.7
    /// server's own named interfaces (all but `base`, whose commands are the protocol's)
    /// converted to that form; `None` for a server that describes neither (named-pipes 0.4).
    pub fn describe(&mut self) -> Result<Option<Value>> {
        match self.call("get_interface", Value::Null) {
            Ok(events) => Ok(events
                .into_iter()
                .find(|e| e.is(ProtocolEvent::Interface))
                .map(|e| Value::from(e.fields().clone()))),
            // A 0.7 server answers a bare get_interface with an error: ask for its interfaces.
            Err(Error::Remote { .. }) => self.named_interfaces(),
            Err(e) => Err(e),
        }
    }

    fn named_interfaces(&mut self) -> Result<Option<Value>> {
        let names = match self.call("list_interfaces", Value::Null) {
            Ok(events) => events
                .iter()
                .find_map(|e| e.get("interfaces").and_then(Value::as_array).cloned())
                .unwrap_or_default(),
            Err(Error::Remote { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut descriptions = Vec::new();
        let mut commands = Vec::new();
        for name in names.iter().filter_map(Value::as_str) {
            if name == named_interface::BASE {
                continue;
            }
            let events = match self.call("get_interface", json!({"name": name})) {
                Ok(events) => events,
                Err(Error::Remote { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Some(interface) = events.iter().find_map(|e| e.get("interface")) else {
                continue;
            };
            if let Some(text) = interface.get("description").and_then(Value::as_str) {
                descriptions.push(text.to_string());
            }
            commands.extend(
                interface
                    .get("commands")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(named_interface::command_from_named),
            );
        }
        Ok(Some(json!({
            "description": descriptions.join(" "),
            "commands": commands,
            "interfaces": names,
        })))
    }
}
