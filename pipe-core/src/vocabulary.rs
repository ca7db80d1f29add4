//! The names on the wire as types. An event's name and a server's state are each declared
//! once, in a vocabulary (an enum made by [`vocabulary!`](crate::vocabulary!)), and used
//! everywhere else through it, so a misspelt name does not compile. The bytes on the wire are
//! the declared names, unchanged.

use std::fmt;

/// The name of an event: its `"event"` field, and what the event means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventName(&'static str, &'static str);

/// The name of a server state, as `get_state` and `state_changed` carry it, and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateName(&'static str, &'static str);

macro_rules! name_type {
    ($ty:ident) => {
        impl $ty {
            /// Declares a name and its meaning (the variant's doc comment). Only vocabularies
            /// call this, once per name; everything else uses their variants.
            pub const fn declare(name: &'static str, description: &'static str) -> Self {
                Self(name, description)
            }

            /// The name as written on the wire.
            pub const fn as_str(self) -> &'static str {
                self.0
            }

            /// What it means, from its vocabulary's doc comment (for interface descriptions).
            pub fn description(self) -> &'static str {
                self.1.trim()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
    };
}
name_type!(EventName);
name_type!(StateName);

/// Declares a vocabulary: an enum whose variants are the names of events
/// ([`EventName`]) or of states ([`StateName`]), each mapped to its wire name once.
///
/// ```
/// pipe_core::vocabulary! {
///     /// What the greeter says.
///     pub enum GreeterEvent: EventName {
///         /// A greeting.
///         Hello = "hello",
///     }
/// }
/// assert_eq!(pipe_core::Event::new(GreeterEvent::Hello).name(), "hello");
/// ```
#[macro_export]
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $kind:ident {
            $($(#[doc = $doc:literal])* $variant:ident = $wire:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[doc = $doc])* $variant,)*
        }

        impl $name {
            /// Every name of this vocabulary.
            #[allow(dead_code)]
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The name as written on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)*
                }
            }

            /// The typed wire name, for constants.
            #[allow(dead_code)]
            pub const fn name(self) -> $crate::$kind {
                match self {
                    $(Self::$variant => $crate::$kind::declare($wire, concat!($($doc),*)),)*
                }
            }
        }

        impl From<$name> for $crate::$kind {
            fn from(name: $name) -> Self {
                name.name()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// The events pipe-core itself sends: built-in commands' answers, errors and ends.
    pub enum ProtocolEvent: EventName {
        /// The answer to `ping`.
        Pong = "pong",
        /// The answer to `subscribe`.
        Subscribed = "subscribed",
        /// The answer to `unsubscribe`.
        Unsubscribed = "unsubscribed",
        /// The answer to `get_state`.
        State = "state",
        /// Broadcast when the state changes.
        StateChanged = "state_changed",
        /// The answer to `get_description`.
        Description = "description",
        /// The answer to `get_help`.
        Help = "help",
        /// The answer to `get_config`.
        Config = "config",
        /// The answer to `get_interface`.
        Interface = "interface",
        /// The answer to `list_interfaces`: the named interfaces the server implements.
        Interfaces = "interfaces",
        /// A request failed.
        Error = "error",
        /// The last event of a request that carried an `id`.
        End = "end",
        /// Audio samples (see [`AudioChunk`](crate::audio::AudioChunk)).
        Audio = "audio",
        /// A piece of streamed text (a chat reply, echo's stream, stt's live text), with
        /// `done: true` on the last.
        Token = "token",
    }
}

vocabulary! {
    /// The states pipe-core itself sets.
    pub enum ProtocolState: StateName {
        /// A server with nothing to load, serving.
        Running = "running",
        /// `stop` arrived: the server is shutting down.
        Stopping = "stopping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabulary_maps_each_variant_to_its_wire_name() {
        assert_eq!(
            EventName::from(ProtocolEvent::StateChanged).as_str(),
            "state_changed"
        );
        assert_eq!(
            StateName::from(ProtocolState::Stopping).to_string(),
            "stopping"
        );
        let names: Vec<&str> = ProtocolEvent::ALL.iter().map(|e| e.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "a wire name declared twice");
    }
}
