//! A folder of files as passages to index: text files found by walking it (hidden entries,
//! binaries and files over [`MAX_FILE_BYTES`] skipped, each skip counted), cut into passages of
//! at most a given length at paragraph ends, else sentence ends, else word ends.

use std::path::{Path, PathBuf};

/// Files larger than this are skipped (logs, data dumps): they are not prose to search.
pub(super) const MAX_FILE_BYTES: u64 = 10 << 20;

/// What a walk found.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Text files, in a stable order.
    pub(super) files: Vec<PathBuf>,
    /// Files skipped as binary, unreadable or too large.
    pub(super) skipped: usize,
}

/// The text files under `root`, or why the folder cannot be read.
pub(super) fn text_files(root: &Path) -> Result<Found, String> {
    let mut found = Found::default();
    let mut pending = vec![root.to_path_buf()];
    if !root.is_dir() {
        return Err(format!("{} is not a folder", root.display()));
    }
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                found.skipped += 1;
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                match entry.metadata() {
                    Ok(m) if m.len() <= MAX_FILE_BYTES => found.files.push(path),
                    _ => found.skipped += 1,
                }
            }
        }
    }
    found.files.sort();
    Ok(found)
}

/// A file's text, or `None` for a binary (a NUL byte, or not UTF-8).
pub(super) fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Cuts `text` into passages of at most `limit` bytes: whole paragraphs packed together while
/// they fit; a longer paragraph at its sentence ends, a longer sentence at word ends (or, with
/// no space to cut at, anywhere on a character boundary). Blank passages are dropped.
pub(super) fn passages(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let push = |piece: &str, current: &mut String, out: &mut Vec<String>| {
        if !current.is_empty() && current.len() + 2 + piece.len() > limit {
            out.push(std::mem::take(current));
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(piece);
    };
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        for piece in split_to_fit(paragraph, limit) {
            push(&piece, &mut current, &mut out);
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// A paragraph in pieces of at most `limit` bytes, cut at sentence ends, else word ends.
fn split_to_fit(paragraph: &str, limit: usize) -> Vec<String> {
    if paragraph.len() <= limit {
        return vec![paragraph.to_string()];
    }
    let mut pieces = Vec::new();
    let mut rest = paragraph;
    while rest.len() > limit {
        let mut cut = floor_boundary(rest, limit);
        let window = &rest[..cut];
        if let Some(end) = window.rfind(['.', '!', '?']).filter(|&i| i > limit / 2) {
            cut = end + 1;
        } else if let Some(space) = window.rfind(char::is_whitespace).filter(|&i| i > 0) {
            cut = space;
        }
        pieces.push(rest[..cut].trim().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_pack_paragraphs_and_cut_long_ones_at_sentences() {
        let text = "First paragraph.\n\nSecond one.\n\n\n".to_string()
            + &"A sentence that goes on. ".repeat(10);
        let out = passages(&text, 60);
        assert_eq!(out[0], "First paragraph.\n\nSecond one.");
        assert!(out.iter().all(|p| p.len() <= 60), "{out:?}");
        assert!(out[1].ends_with('.'), "{out:?}");
        let joined: String = out.concat().split_whitespace().collect();
        let original: String = text.split_whitespace().collect();
        assert_eq!(joined, original, "nothing lost");
        // No space to cut at, and multi-byte characters: cut on a boundary.
        let out = passages(&"é".repeat(100), 31);
        assert!(out.iter().all(|p| p.len() <= 31 && !p.is_empty()));
    }

    #[test]
    fn walks_text_files_and_skips_binaries_and_hidden_entries() {
        let root = std::env::temp_dir().join(format!("cpipe-passages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("a.md"), "text").unwrap();
        std::fs::write(root.join("sub/b.txt"), "more").unwrap();
        std::fs::write(root.join(".git/c"), "hidden").unwrap();
        std::fs::write(root.join("d.bin"), [0u8, 1, 2]).unwrap();
        let found = text_files(&root).unwrap();
        assert_eq!(found.files.len(), 3);
        let texts: Vec<_> = found.files.iter().filter_map(|p| read_text(p)).collect();
        assert_eq!(texts, ["text", "more"]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
