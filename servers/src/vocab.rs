//! The events and states of cpipe's own servers, each named once (pipe-core's
//! [`vocabulary!`](pipe_core::vocabulary!)); pipe-core's protocol events and states are in
//! [`pipe_core::ProtocolEvent`] and [`pipe_core::ProtocolState`].

pipe_core::vocabulary! {
    /// What the servers emit besides the protocol's own events.
    pub enum ServerEvent: EventName {
        /// echo: the request's fields, unchanged.
        Echo = "echo",
        /// chat: the end of a reply, with its usage (requests with an id).
        Done = "done",
        /// chat_blocking: the whole reply.
        Reply = "reply",
        /// chat: the request waits for a free slot, at `position` in line (1: next).
        Queued = "queued",
        /// tts synthesize: the whole text was spoken.
        Synthesized = "synthesized",
        /// tts: the answer to subscribe_audio.
        AudioSubscribed = "audio_subscribed",
        /// tts: the answer to is_speaking.
        IsSpeaking = "is_speaking",
        /// tts: the answer to stop_speaking.
        SpeechStopped = "speech_stopped",
        /// Speech began (tts: playing; stt: heard).
        SpeechStart = "speech_start",
        /// Speech ended (tts: played; stt: heard).
        SpeechEnd = "speech_end",
        /// stt: the text of an utterance still going on.
        Partial = "partial",
        /// stt: an utterance's (or a file's) final text, with segments.
        Transcript = "transcript",
        /// stt: the answer to listen.
        Listening = "listening",
        /// stt: the answer to pause.
        Paused = "paused",
        /// stt: the answer to list_devices: the input devices, `{index, name, channels}`.
        Devices = "devices",
        /// stt: the answer to get_device and set_device: the selected input device's index
        /// (null: the default).
        Device = "device",
        /// stt: the text of the utterance under way so far, re-sent as it grows, and its final
        /// text (named-pipes 0.7).
        Speech = "speech",
    }
}

pipe_core::vocabulary! {
    /// The states of the model servers, besides the protocol's `running` and `stopping`.
    pub enum ServerState: StateName {
        /// The model is loading (off the listener: built-in commands answer meanwhile).
        Loading = "loading",
        /// Loaded, with nothing to do.
        Idle = "idle",
        /// The model failed to load: the reason is in get_config, requests get unavailable.
        Error = "error",
        /// chat: generating.
        Inferring = "inferring",
        /// tts: synthesizing speech.
        Synthesizing = "synthesizing",
        /// stt: transcribing.
        Transcribing = "transcribing",
        /// stt: a live source runs.
        Listening = "listening",
        /// stt: loaded, not listening (named-pipes 0.7; `start` listens).
        Ready = "ready",
        /// stt: listening was paused by `pause`.
        Paused = "paused",
    }
}
