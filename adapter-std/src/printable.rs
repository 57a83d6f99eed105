//! Text from files made safe to print on a terminal.
//!
//! A snapshot is data from elsewhere (a server, a colleague, a device), and its file and
//! function names, like the source lines the CLI shows under them, reach the user's terminal.
//! Control characters there are commands: an escape sequence can recolour, retitle or clear the
//! screen, and a newline inside a name can print a line of its own that looks like the report's;
//! bidirectional overrides and invisible format characters make a name display as another. The
//! CLI therefore shows each of these characters as `\u{..}`, as Rust's `escape_debug` does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tracemalloc_core::Snapshot;

/// Whether `c` is shown escaped: C0 controls (line ends and tabs too, unless `keep_layout`),
/// DEL and the C1 controls (`U+0080`–`U+009F`; some terminals obey `U+009B` as CSI), and the
/// format characters that reorder or break what is shown: bidirectional marks, embeddings,
/// overrides and isolates (a name could display as another), and the line and paragraph
/// separators. In names (not `keep_layout`) every other character that shows as nothing too
/// (a zero-width space, a soft hyphen, a variation selector, tag characters), so that
/// `cache\u{200b}.rs` does not print as `cache.rs`, a second line that looks like the first.
/// Source lines keep them, as emoji sequences and hyphenation hints there are the user's own
/// text.
fn is_escaped(c: char, keep_layout: bool) -> bool {
    match c {
        '\n' | '\t' => !keep_layout,
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => true,
        _ => c.is_control() || (!keep_layout && is_invisible_format(c)),
    }
}

/// Characters a name can hold without showing them: Unicode's format characters (general
/// category `Cf`, Unicode 15; a few of them, the Arabic number signs, do show, and are escaped
/// all the same) and the other default-ignorable code points (variation selectors, the
/// combining grapheme joiner, Hangul fillers, Mongolian free variation selectors).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// `text` with every control character written as `\u{..}` (see [`is_escaped`]); borrowed when
/// there is none, as in nearly every name. In names (not `keep_layout`) a backslash that starts
/// the text `u{` is written `\u{5c}` too, so that every `\u{` shown is an escape: a name
/// holding the six characters `\u{200b}` does not print as one holding the zero-width space.
/// Source lines keep theirs (Rust's own escapes are written so).
pub(crate) fn escape_controls(text: &str, keep_layout: bool) -> Cow<'_, str> {
    // Printable ASCII first, byte by byte: most names are, and a snapshot's frames number in
    // the millions (decoding characters took two thirds of `stats` on a large device file).
    let printable_ascii = text.bytes().all(|b| matches!(b, b' '..=b'~'));
    let looks_escaped = !keep_layout && text.contains("\\u{");
    if !looks_escaped && (printable_ascii || !text.chars().any(|c| is_escaped(c, keep_layout))) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (at, c) in text.char_indices() {
        let escape_like = looks_escaped && c == '\\' && text[at + 1..].starts_with("u{");
        if escape_like || is_escaped(c, keep_layout) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Escapes the control characters in every file and function name of `snapshot`, newlines
/// included (each report line is one entry). A name with one no longer names a readable file,
/// so its source lines are not shown.
pub(crate) fn escape_names(snapshot: &mut Snapshot) {
    // Each name once, its escaped copy shared as the name was: a forged file can name one long
    // name from millions of frames, a few bytes each, and a copy per frame would take the
    // memory the decoder refused to. The originals are kept, so no address is reused.
    let mut escaped: HashMap<*const u8, (Arc<str>, Option<Arc<str>>)> = HashMap::new();
    let mut escape = |name: &mut Arc<str>| {
        let (_, copy) = escaped
            .entry(Arc::as_ptr(name).cast::<u8>())
            .or_insert_with(|| {
                let copy = match escape_controls(name, false) {
                    Cow::Owned(copy) => Some(Arc::from(copy)),
                    Cow::Borrowed(_) => None,
                };
                (name.clone(), copy)
            });
        if let Some(copy) = copy {
            *name = copy.clone();
        }
    };
    for traceback in &mut snapshot.tracebacks {
        for frame in &mut traceback.frames {
            escape(&mut frame.filename);
            if let Some(function) = &mut frame.function {
                escape(function);
            }
        }
    }
}

/// Passes text through to `inner` with its control characters escaped, line ends and tabs
/// kept: the report's own layout stays, a source line's escape sequences do not reach the
/// terminal. Bytes that are not UTF-8 pass with only their ASCII controls escaped.
pub(crate) struct Printable<'a> {
    inner: &'a mut dyn io::Write,
}

impl<'a> Printable<'a> {
    pub(crate) fn new(inner: &'a mut dyn io::Write) -> Printable<'a> {
        Printable { inner }
    }
}

impl io::Write for Printable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // `write!` hands over whole `str` pieces, so a character is never split between calls.
        match std::str::from_utf8(buf) {
            Ok(text) => self
                .inner
                .write_all(escape_controls(text, true).as_bytes())?,
            Err(_) => {
                for &b in buf {
                    if is_escaped(char::from(b), true) && b.is_ascii() {
                        write!(self.inner, "{}", char::from(b).escape_unicode())?;
                    } else {
                        self.inner.write_all(&[b])?;
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(
            escape_controls("src/cache.rs", false),
            Cow::Borrowed("src/cache.rs")
        ));
        assert_eq!(
            escape_controls("a\x1b[2Jb\nc\td\u{9b}e\u{7f}ü", false),
            "a\\u{1b}[2Jb\\u{a}c\\u{9}d\\u{9b}e\\u{7f}ü"
        );
        assert_eq!(escape_controls("a\nb\tc\rd", true), "a\nb\tc\\u{d}d");
        // A right-to-left override makes `evil.rs` display as another name; a line separator
        // breaks the line on some terminals. In source lines other format characters (a
        // joiner in an emoji sequence) stay; in names, where they only hide, they are shown.
        assert_eq!(
            escape_controls("src/\u{202e}sr.live\u{2028}x\u{200d}y", true),
            "src/\\u{202e}sr.live\\u{2028}x\u{200d}y"
        );
        assert_eq!(
            escape_controls(
                "cache\u{200b}.rs x\u{200d}y \u{ad}\u{feff}\u{e0041}\u{fe0f}",
                false
            ),
            "cache\\u{200b}.rs x\\u{200d}y \\u{ad}\\u{feff}\\u{e0041}\\u{fe0f}"
        );
        // A name that spells an escape out is not shown as the character: its backslash is
        // escaped. Source lines keep their escapes, and backslashes elsewhere stay.
        assert_eq!(
            escape_controls("cache\\u{200b}.rs", false),
            "cache\\u{5c}u{200b}.rs"
        );
        assert_eq!(
            escape_controls("a\\u{5c}u{7}\u{7}", false),
            "a\\u{5c}u{5c}u{7}\\u{7}"
        );
        assert!(matches!(
            escape_controls("C:\\src\\main.rs", false),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            escape_controls("let s = \"\\u{1F600}\";", true),
            Cow::Borrowed(_)
        ));
        // Letters beside them, and other invisible-looking but non-format text, stay.
        assert!(matches!(
            escape_controls("naïve\u{a0}名前\u{301}", false),
            Cow::Borrowed(_)
        ));
        for mark in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{2029}', '\u{2066}', '\u{2069}',
        ] {
            let shown = escape_controls(&format!("a{mark}b"), true).into_owned();
            assert_eq!(shown, format!("a{}b", mark.escape_unicode()));
        }
    }

    /// A forged file can name one long name from every frame, a few bytes each: escaped per
    /// frame, a 100 KiB file of them took 1.2 GB.
    #[test]
    fn a_name_shared_by_many_frames_is_escaped_once() {
        use tracemalloc_core::snapshot::snapshot_from_traces;
        use tracemalloc_core::{Frame, Traceback};

        let name: Arc<str> = Arc::from("\x1b".repeat(100));
        let frame = Frame {
            filename: name.clone(),
            lineno: 1,
            function: Some(name),
        };
        let traceback = Traceback::new(vec![frame; 1000]);
        let mut snapshot = snapshot_from_traces(16, [(0, 1, traceback)]);
        escape_names(&mut snapshot);
        let frames = &snapshot.tracebacks[0].frames;
        let escaped = &frames[0].filename;
        assert_eq!(&**escaped, "\\u{1b}".repeat(100));
        assert!(frames.iter().all(|f| Arc::ptr_eq(&f.filename, escaped)
            && f.function.as_ref().is_some_and(|g| Arc::ptr_eq(g, escaped))));
    }

    #[test]
    fn the_writer_keeps_the_layout_and_escapes_the_rest() {
        let mut out = Vec::new();
        {
            let mut printable = Printable::new(&mut out);
            let title = "\x1b]0;owned\x07";
            writeln!(printable, "#1: {title}\tx").unwrap();
            printable.write_all(b"\xff\x1b\n").unwrap();
        }
        assert_eq!(out, b"#1: \\u{1b}]0;owned\\u{7}\tx\n\xff\\u{1b}\n");
    }
}
