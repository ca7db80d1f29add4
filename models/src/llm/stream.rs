//! Turning generated token ids into text as they come: never splitting a UTF-8 character or a
//! multi-token word, and holding back text that may be the start of a stop sequence.

use tokenizers::Tokenizer;

use super::LlmError;

/// Incremental detokenizer: decodes a sliding window so each step costs O(window), and emits
/// only text that later tokens cannot change. It takes the tokenizer at each call, so that a
/// generation in progress holds no borrow of the model.
#[derive(Default)]
pub(super) struct Detokenizer {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    fn decode(tokenizer: &Tokenizer, tokens: &[u32]) -> Result<String, LlmError> {
        tokenizer
            .decode(tokens, true)
            .map_err(|e| LlmError::Tokenizer(format!("cannot decode tokens: {e}")))
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub(super) fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, LlmError> {
        self.tokens.push(token);
        let prefix = Self::decode(
            tokenizer,
            &self.tokens[self.prefix_offset..self.read_offset],
        )?;
        let full = Self::decode(tokenizer, &self.tokens[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let text = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            return Ok(text);
        }
        Ok(String::new())
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub(super) fn finish(&self, tokenizer: &Tokenizer) -> Result<String, LlmError> {
        let prefix = Self::decode(
            tokenizer,
            &self.tokens[self.prefix_offset..self.read_offset],
        )?;
        let full = Self::decode(tokenizer, &self.tokens[self.prefix_offset..])?;
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

/// Cuts generated text at the first stop sequence, holding back any tail that could still
/// turn into one.
pub(super) struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What the filter lets out.
pub(super) struct Filtered {
    /// Text safe to emit now.
    pub(super) text: String,
    /// A stop sequence was found; nothing after it is emitted.
    pub(super) stopped: bool,
}

impl StopFilter {
    pub(super) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub(super) fn push(&mut self, text: &str) -> Filtered {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Filtered {
                text,
                stopped: true,
            };
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Filtered {
            text,
            stopped: false,
        }
    }

    /// Releases the held tail when generation ends without a stop.
    pub(super) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_split_across_pieces_are_caught() {
        let mut f = StopFilter::new(&["\nUser:".to_string()]);
        let mut out = String::new();
        for piece in ["Paris", " is", "\nUs", "er", ": more"] {
            let r = f.push(piece);
            out.push_str(&r.text);
            if r.stopped {
                break;
            }
        }
        assert_eq!(out, "Paris is");
    }

    #[test]
    fn false_alarms_are_released() {
        let mut f = StopFilter::new(&["END".to_string()]);
        assert_eq!(f.push("THE EN").text, "THE ");
        assert_eq!(f.push("VY").text, "ENVY");
    }

    #[test]
    fn held_tail_is_flushed_at_the_end() {
        let mut f = StopFilter::new(&["###".to_string()]);
        assert_eq!(f.push("a #").text, "a ");
        assert_eq!(f.finish(), "#");
    }
}
