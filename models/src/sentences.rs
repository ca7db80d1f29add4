//! Cutting streamed text into sentences as it arrives, so each can be spoken as soon as it is
//! complete.

/// Words whose trailing period does not end a sentence.
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "mt", "no",
    "fig", "approx",
];
/// Text longer than this without a sentence end is cut at a clause or word boundary, so a
/// run-on sentence does not hold speech back.
const MAX_SENTENCE: usize = 300;

/// Accumulates text and hands out complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buffer: String,
}

impl SentenceSplitter {
    /// Adds text; returns the sentences it completed, trimmed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut sentences = Vec::new();
        while let Some(end) = self.boundary() {
            let rest = self.buffer.split_off(end);
            let sentence = std::mem::replace(&mut self.buffer, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                sentences.push(sentence.to_string());
            }
        }
        sentences
    }

    /// Takes whatever is left as a last sentence (at the end of a stream).
    pub fn flush(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Drops buffered text.
    pub fn clear(&mut self) {
        self.buffer.clear();
    }

    /// Whether text is waiting for its sentence to end.
    pub fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty()
    }

    /// The byte offset just past the first complete sentence, if there is one.
    fn boundary(&self) -> Option<usize> {
        let text = &self.buffer;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for (i, &(at, c)) in chars.iter().enumerate() {
            if c == '\n' && text[..at].trim().chars().any(char::is_alphanumeric) {
                return Some(at + 1);
            }
            if !matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
                continue;
            }
            // Skip closing quotes and brackets after the mark.
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
            {
                j += 1;
            }
            let Some(&(next_at, next)) = chars.get(j) else {
                return None; // the next token decides
            };
            if !next.is_whitespace() {
                continue; // "3.14", "e.g.", "..."
            }
            if c == '.' && is_abbreviation(&text[..at]) {
                continue;
            }
            return Some(next_at);
        }
        if text.len() > MAX_SENTENCE {
            let head = &text[..floor_char_boundary(text, MAX_SENTENCE)];
            let cut = head
                .rfind([',', ';', ':'])
                .map(|i| i + 1)
                .or_else(|| head.rfind(' '))
                .filter(|&i| i > 0)
                .unwrap_or(head.len());
            return Some(cut);
        }
        None
    }
}

/// Whether the word ending at a period is an abbreviation or an initial ("J. R. R.").
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("")
        .to_lowercase();
    let is_initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    is_initial || ABBREVIATIONS.contains(&word.as_str())
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tokens: &[&str]) -> (Vec<String>, Option<String>) {
        let mut splitter = SentenceSplitter::default();
        let mut out = Vec::new();
        for t in tokens {
            out.extend(splitter.push(t));
        }
        (out, splitter.flush())
    }

    #[test]
    fn sentences_complete_when_the_next_word_starts() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("The capital is Paris.").is_empty());
        assert_eq!(s.push(" It is"), vec!["The capital is Paris."]);
        assert_eq!(s.flush().as_deref(), Some("It is"));
    }

    #[test]
    fn abbreviations_decimals_and_initials_do_not_end_sentences() {
        let (out, rest) = feed(&[
            "Dr. Smith paid 3.50 dollars to J. R. Tolkien, e.g. ",
            "today! Yes? ",
            "No",
        ]);
        assert_eq!(
            out,
            vec![
                "Dr. Smith paid 3.50 dollars to J. R. Tolkien, e.g. today!",
                "Yes?"
            ]
        );
        assert_eq!(rest.as_deref(), Some("No"));
    }

    #[test]
    fn quotes_after_the_mark_stay_with_the_sentence() {
        let (out, _) = feed(&["He said \"stop.\" Then", " left."]);
        assert_eq!(out, vec!["He said \"stop.\""]);
    }

    #[test]
    fn lines_end_sentences_and_run_ons_are_cut() {
        let (out, _) = feed(&["- first item\n- second item\n"]);
        assert_eq!(out, vec!["- first item", "- second item"]);
        let long = "word, ".repeat(100);
        let (out, _) = feed(&[&long]);
        assert!(out.len() >= 2 && out.iter().all(|s| s.len() <= MAX_SENTENCE));
    }
}
