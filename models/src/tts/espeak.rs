//! Text to IPA phonemes with espeak-ng, through a few functions of Debian's `libespeak-ng`
//! (declared here by hand: no bindgen). espeak-ng keeps global state, so every call holds one
//! process-wide lock.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

/// `AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread, we only ask for phonemes.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: report errors instead of exiting the process.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const CHARS_UTF8: c_int = 1;
const PHONEMES_IPA: c_int = 0x02;

#[link(name = "espeak-ng")]
extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// Whether espeak-ng was initialised (`Some(ok)`), under the lock all calls take.
static ESPEAK: Mutex<Option<bool>> = Mutex::new(None);

/// espeak-ng failed.
#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    /// The library could not find its data.
    #[error("espeak-ng could not initialise (is espeak-ng-data installed? apt-get install espeak-ng-data)")]
    Init,
    /// The voice's language is unknown to espeak-ng.
    #[error("espeak-ng has no voice '{0}' (see espeak-ng --voices)")]
    Voice(String),
}

/// How a clause ended, which Piper voices are trained to hear as punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
    None,
}

impl Terminator {
    /// The clause's last punctuation mark, looking past closing quotes and brackets.
    fn of(clause: &str) -> Self {
        let last = clause
            .trim_end()
            .trim_end_matches(['"', '\'', ')', ']', '}', '”', '’', '»'])
            .chars()
            .last();
        match last {
            Some('.' | '…') => Self::Period,
            Some('?') => Self::Question,
            Some('!') => Self::Exclamation,
            Some(',') => Self::Comma,
            Some(':') => Self::Colon,
            Some(';') => Self::Semicolon,
            _ => Self::None,
        }
    }

    /// What Piper appends to the clause's phonemes, and whether the sentence ends.
    fn suffix(self) -> (&'static str, bool) {
        match self {
            Self::Period => (".", true),
            Self::Question => ("?", true),
            Self::Exclamation => ("!", true),
            Self::Comma => (", ", false),
            Self::Colon => (": ", false),
            Self::Semicolon => ("; ", false),
            Self::None => (" ", false),
        }
    }
}

/// The IPA phonemes of `text` in espeak voice `voice`, one string per sentence, with the
/// clause punctuation Piper voices expect (as piper-phonemize produces them).
pub fn phonemize(voice: &str, text: &str) -> Result<Vec<String>, EspeakError> {
    let mut guard = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        // SAFETY: called under the lock; a null path means espeak-ng's installed data.
        let rate = unsafe {
            espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            )
        };
        *guard = Some(rate > 0);
    }
    if *guard != Some(true) {
        return Err(EspeakError::Init);
    }
    let name = CString::new(voice).map_err(|_| EspeakError::Voice(voice.into()))?;
    // SAFETY: a valid C string, under the lock.
    if unsafe { espeak_SetVoiceByName(name.as_ptr()) } != 0 {
        return Err(EspeakError::Voice(voice.into()));
    }
    let mut sentences = Vec::new();
    let mut sentence = String::new();
    for clause in clauses(text) {
        if clause.chars().any(char::is_alphanumeric) {
            sentence.push_str(&strip_language_flags(&clause_phonemes(clause)));
        }
        let (suffix, ends_sentence) = Terminator::of(clause).suffix();
        sentence.push_str(suffix);
        if ends_sentence {
            push_sentence(&mut sentences, &mut sentence);
        }
    }
    push_sentence(&mut sentences, &mut sentence);
    Ok(sentences)
}

/// Cuts text into clauses, each ending at its punctuation mark (and any closing quotes) when
/// whitespace or the end follows, as Piper's espeak fork reports them.
fn clauses(text: &str) -> Vec<&str> {
    let mut clauses = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if !matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '…') {
            continue;
        }
        let mut end = at + c.len_utf8();
        while let Some(&(next_at, next)) = chars.peek() {
            if matches!(next, '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»') {
                end = next_at + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        if chars.peek().is_none_or(|&(_, next)| next.is_whitespace()) {
            clauses.push(&text[start..end]);
            start = end;
        }
    }
    if !text[start..].trim().is_empty() {
        clauses.push(&text[start..]);
    }
    clauses
}

/// espeak-ng's IPA for one clause (called under the lock, the voice already set).
fn clause_phonemes(clause: &str) -> String {
    // espeak-ng reads up to a NUL: drop any inside the text.
    let input = CString::new(clause.replace('\0', " ")).expect("NULs were removed");
    let mut cursor: *const c_void = input.as_ptr().cast();
    let mut out = String::new();
    while !cursor.is_null() {
        // SAFETY: `cursor` points into `input`, which outlives the loop; espeak advances it
        // past what it read, or sets it to null at the end.
        let phonemes = unsafe { espeak_TextToPhonemes(&mut cursor, CHARS_UTF8, PHONEMES_IPA) };
        if phonemes.is_null() {
            break;
        }
        // SAFETY: espeak returns a NUL-terminated string valid until its next call.
        let piece = unsafe { CStr::from_ptr(phonemes) }.to_string_lossy();
        if !piece.trim().is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(piece.trim());
        }
    }
    out
}

fn push_sentence(sentences: &mut Vec<String>, sentence: &mut String) {
    let trimmed = sentence.trim();
    // A "sentence" of punctuation alone says nothing.
    if trimmed.chars().any(char::is_alphabetic) {
        sentences.push(trimmed.to_string());
    }
    sentence.clear();
}

/// Removes espeak's language-switch markers such as `(fr)` around foreign words.
fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut depth = 0;
    for c in phonemes.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_keep_their_punctuation() {
        let sentences = phonemize("en-us", "Hello, world. How are you?").unwrap();
        assert_eq!(sentences.len(), 2, "{sentences:?}");
        assert!(sentences[0].contains(", ") && sentences[0].ends_with('.'));
        assert!(sentences[1].ends_with('?'));
        assert!(sentences[0].starts_with("həl"), "{}", sentences[0]);
    }

    #[test]
    fn punctuation_alone_says_nothing() {
        assert!(phonemize("en-us", "... !!! ,,,").unwrap().is_empty());
        assert!(phonemize("en-us", "").unwrap().is_empty());
    }

    #[test]
    fn unknown_voices_are_errors() {
        assert!(matches!(
            phonemize("xx-nowhere", "hi"),
            Err(EspeakError::Voice(_))
        ));
    }

    #[test]
    fn language_flags_are_removed() {
        assert_eq!(strip_language_flags("(fr)bɔ̃ʒuʁ(en)"), "bɔ̃ʒuʁ");
    }
}
