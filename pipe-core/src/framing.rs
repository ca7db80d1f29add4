//! Newline-delimited framing that survives what a FIFO delivers: lines split across reads,
//! several lines in one read, and lines too long to keep.

/// What a [`LineBuffer`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete line, without its `\n` (and without a trailing `\r`).
    Line(&'a [u8]),
    /// A line longer than the limit was discarded; `head` is its first bytes, so the
    /// sender can still be identified.
    TooLarge {
        /// The full length of the discarded line in bytes.
        len: usize,
        /// The line's first bytes.
        head: &'a [u8],
    },
}

/// How many bytes of an over-long line are kept to identify its sender.
const HEAD_LEN: usize = 512;

/// Accumulates bytes from one source and cuts them into lines of at most `max_len` bytes.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_len: usize,
    /// Length so far of a line being discarded for exceeding `max_len`.
    discarding: Option<usize>,
}

impl LineBuffer {
    /// A buffer that accepts lines of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            max_len,
            discarding: None,
        }
    }

    /// Whether a partial line is waiting for its end.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.discarding.is_some()
    }

    /// Feeds `data` and calls `on_frame` for each complete frame. Blank lines are skipped.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        while !data.is_empty() {
            if let Some(dropped) = self.discarding {
                match memchr(data) {
                    Some(end) => {
                        on_frame(Frame::TooLarge {
                            len: dropped + end,
                            head: &self.buf,
                        });
                        self.buf.clear();
                        self.discarding = None;
                        data = &data[end + 1..];
                    }
                    None => {
                        self.discarding = Some(dropped + data.len());
                        return;
                    }
                }
                continue;
            }
            self.buf.extend_from_slice(data);
            data = &[];
            let mut start = 0;
            while let Some(offset) = memchr(&self.buf[self.scanned..]) {
                let end = self.scanned + offset;
                let mut line = &self.buf[start..end];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                if line.len() > self.max_len {
                    on_frame(Frame::TooLarge {
                        len: line.len(),
                        head: &line[..HEAD_LEN.min(line.len())],
                    });
                } else if !line.iter().all(u8::is_ascii_whitespace) {
                    on_frame(Frame::Line(line));
                }
                start = end + 1;
                self.scanned = start;
            }
            self.buf.drain(..start);
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_len {
                // Keep only the head; the rest is skipped until the line ends.
                self.discarding = Some(self.buf.len());
                self.buf.truncate(HEAD_LEN);
                self.scanned = 0;
            }
        }
    }
}

fn memchr(data: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &mut LineBuffer, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        buf.push(data, |f| {
            out.push(match f {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::TooLarge { len, head } => {
                    format!("TOO LARGE {len} {}", String::from_utf8_lossy(&head[..4]))
                }
            })
        });
        out
    }

    #[test]
    fn joins_lines_split_across_reads() {
        let mut b = LineBuffer::new(100);
        assert!(frames(&mut b, b"{\"a\":").is_empty());
        assert!(b.has_partial());
        assert!(frames(&mut b, b"1").is_empty());
        assert_eq!(
            frames(&mut b, b"}\n{\"b\":2}\n{"),
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(frames(&mut b, b"}\r\n"), ["{}"]);
        assert!(!b.has_partial());
    }

    #[test]
    fn skips_blank_lines() {
        let mut b = LineBuffer::new(100);
        assert_eq!(frames(&mut b, b"\n \n\r\nx\n"), ["x"]);
    }

    #[test]
    fn discards_over_long_lines_and_recovers() {
        let mut b = LineBuffer::new(10);
        assert!(frames(&mut b, b"abcdefghijklmnop").is_empty());
        assert!(frames(&mut b, &[b'q'; 5000]).is_empty());
        assert_eq!(frames(&mut b, b"rs\nok\n"), ["TOO LARGE 5018 abcd", "ok"]);
        assert_eq!(
            frames(&mut b, b"0123456789AB\nfine\n"),
            ["TOO LARGE 12 0123", "fine"]
        );
    }
}
