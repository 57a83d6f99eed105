//! Source lines under traceback frames, as Python's `linecache` provides them.

use std::collections::HashMap;
use std::path::PathBuf;

use tracemalloc_core::Traceback;

use crate::files::read_regular;

/// Source files larger than this are not read for their lines.
const MAX_SOURCE: u64 = 16 << 20;
/// Bytes of source files read in all, after which no further file is: a forged snapshot
/// could name thousands of large files.
const MAX_SOURCES: u64 = 256 << 20;

/// A source file's text, kept whole, with where each line starts: its size plus 4 bytes a
/// line in memory (a `String` per line took 30 times the file's size for short lines).
struct Text {
    text: String,
    starts: Vec<u32>,
}

// Line offsets are `u32`.
const _: () = assert!(MAX_SOURCE <= u32::MAX as u64);

impl Text {
    fn new(mut text: String) -> Text {
        // Not part of line 1: `linecache` decodes such a file as `utf-8-sig`, and rustc skips it.
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let mut starts = Vec::with_capacity(text.matches('\n').count() + 1);
        starts.push(0);
        starts.extend(text.match_indices('\n').map(|(i, _)| i as u32 + 1));
        Text { text, starts }
    }

    /// Bytes it holds.
    fn size(&self) -> u64 {
        (self.text.len() + self.starts.len() * size_of::<u32>()) as u64
    }

    /// Line `lineno` (1-based), trimmed.
    fn line(&self, lineno: u32) -> Option<&str> {
        let index = (lineno as usize).checked_sub(1)?;
        let start = *self.starts.get(index)? as usize;
        let end = self
            .starts
            .get(index + 1)
            .map_or(self.text.len(), |&next| next as usize);
        // After a final newline, `starts` holds the end of the text: no line is there.
        (start < self.text.len()).then(|| self.text[start..end].trim())
    }
}

/// Reads source files once and hands out their lines.
pub struct SourceLines {
    /// Each name a snapshot used, with the file it names.
    names: HashMap<String, PathBuf>,
    /// Each file read, by its canonical path: names that spell one file differently (`./a.rs`,
    /// `src/../a.rs`, a symlink) share it.
    files: HashMap<PathBuf, Option<Text>>,
    /// Bytes that further files may still take ([`MAX_SOURCES`] at first).
    budget: u64,
}

impl Default for SourceLines {
    fn default() -> Self {
        SourceLines {
            names: HashMap::new(),
            files: HashMap::new(),
            budget: MAX_SOURCES,
        }
    }
}

impl SourceLines {
    /// Line `lineno` (1-based) of `filename`, trimmed, if the file is a readable regular file
    /// of UTF-8 text of at most 16 MiB (and the files read so far come to at most 256 MiB):
    /// relative paths are tried against the current directory. (A snapshot names its files;
    /// one from elsewhere could name a FIFO or a device, which would hang the report, or many
    /// large files, which would fill memory.)
    pub fn line(&mut self, filename: &str, lineno: u32) -> Option<String> {
        let path = self
            .names
            .entry(filename.to_owned())
            .or_insert_with(|| {
                // Where a path cannot be made canonical (some virtual drives on Windows), it is
                // read as named.
                std::fs::canonicalize(filename).unwrap_or_else(|_| PathBuf::from(filename))
            })
            .clone();
        let budget = &mut self.budget;
        let text = self
            .files
            .entry(path)
            .or_insert_with_key(|path| {
                let (bytes, more) = read_regular(path, (*budget).min(MAX_SOURCE)).ok()?;
                *budget = budget.saturating_sub(bytes.len() as u64);
                if more {
                    return None;
                }
                let text = Text::new(String::from_utf8(bytes).ok()?);
                *budget = budget.saturating_sub(text.size() - text.text.len() as u64);
                Some(text)
            })
            .as_ref()?;
        let line = text.line(lineno)?;
        (!line.is_empty()).then(|| line.to_owned())
    }

    /// Python's `Traceback.format(limit)` with the source line under each frame.
    pub fn format(&mut self, traceback: &Traceback, limit: Option<i64>) -> Vec<String> {
        let mut lines = Vec::new();
        let done: Result<(), std::convert::Infallible> =
            self.for_each_line(traceback, limit, |line| {
                lines.push(line);
                Ok(())
            });
        let Ok(()) = done;
        lines
    }

    /// [`SourceLines::format`] written to `out` line by line.
    pub fn write(
        &mut self,
        traceback: &Traceback,
        limit: Option<i64>,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        self.for_each_line(traceback, limit, |line| writeln!(out, "{line}"))
    }

    fn for_each_line<E>(
        &mut self,
        traceback: &Traceback,
        limit: Option<i64>,
        emit: impl FnMut(String) -> Result<(), E>,
    ) -> Result<(), E> {
        let cell = std::cell::RefCell::new(self);
        let source = |file: &str, line| cell.borrow_mut().line(file, line);
        traceback.try_for_each_line(limit, false, &source, emit)
    }
}

/// Python's `Traceback.format(limit)` with source lines, read from the current directory.
pub fn format_traceback(traceback: &Traceback, limit: Option<i64>) -> Vec<String> {
    SourceLines::default().format(traceback, limit)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A snapshot names the files whose lines a report shows; one from elsewhere may name a
    /// FIFO (whose open would wait for a writer) or a device (endless): neither is read.
    #[test]
    fn only_regular_files_give_lines() {
        let dir = std::env::temp_dir().join(format!("tracemalloc-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("a.rs");
        std::fs::write(&text, "fn main() {\n    leak();\n}\n").unwrap();
        let fifo = dir.join("fifo.rs");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let mut lines = SourceLines::default();
        assert_eq!(
            lines.line(text.to_str().unwrap(), 2).as_deref(),
            Some("leak();")
        );
        assert_eq!(lines.line(fifo.to_str().unwrap(), 1), None);
        assert_eq!(lines.line("/dev/zero", 1), None);
        assert_eq!(lines.line(dir.to_str().unwrap(), 1), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_are_numbered_from_one_and_trimmed() {
        let text = Text::new("fn a() {\r\n    leak();\n\n}".to_owned());
        let lines: Vec<_> = (0..6).map(|n| text.line(n)).collect();
        assert_eq!(
            lines,
            [
                None,
                Some("fn a() {"),
                Some("leak();"),
                Some(""),
                Some("}"),
                None
            ]
        );
        assert_eq!(Text::new("a\n".to_owned()).line(2), None);
    }

    /// Python's `linecache` reads such a file as `utf-8-sig`, and rustc skips the mark too.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let text = Text::new("\u{feff}fn a() {\n}\n".to_owned());
        assert_eq!(text.line(1), Some("fn a() {"));
        assert_eq!(text.line(2), Some("}"));
    }

    /// One file named in many ways is read once (a forged snapshot could spell one large file
    /// thousands of ways).
    #[test]
    fn names_of_one_file_share_it() {
        let dir = std::env::temp_dir().join(format!("tracemalloc-alias-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let path = dir.join("a.rs");
        std::fs::write(&path, "first\n").unwrap(); // 6 bytes, 2 line starts
        let mut lines = SourceLines {
            budget: 100,
            ..SourceLines::default()
        };
        let name = path.to_str().unwrap();
        let other = format!("{}/sub/../a.rs", dir.display());
        assert_eq!(lines.line(name, 1).as_deref(), Some("first"));
        assert_eq!(lines.line(&other, 1).as_deref(), Some("first")); // no second read
        assert_eq!(lines.budget, 100 - 6 - 2 * 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_read_while_the_budget_lasts() {
        let dir = std::env::temp_dir().join(format!("tracemalloc-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let [a, b] = ["a.rs", "b.rs"].map(|name| {
            let path = dir.join(name);
            std::fs::write(&path, "first\nsecond\n").unwrap(); // 13 bytes
            path.to_str().unwrap().to_owned()
        });
        let mut lines = SourceLines {
            budget: 20,
            ..SourceLines::default()
        };
        let big = dir.join("big.rs");
        std::fs::write(&big, "x".repeat(30)).unwrap();
        assert_eq!(lines.line(big.to_str().unwrap(), 1), None); // too big: not read
        assert_eq!(lines.budget, 20); // nor charged
        assert_eq!(lines.line(&a, 2).as_deref(), Some("second"));
        assert_eq!(lines.line(&b, 1), None); // 13 bytes and 3 starts took the rest
        assert_eq!(lines.line(&a, 1).as_deref(), Some("first")); // read once, kept
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
