//! Filters: Python's `tracemalloc.Filter` and `DomainFilter`, and `Snapshot.filter_traces()`.
//!
//! A snapshot keeps a trace when at least one inclusive filter matches it (or there is none)
//! and every exclusive filter lets it through, exactly as CPython's `_filter_trace`. File
//! patterns are `fnmatch` globs (`*`, `?`, `[seq]`, `[!seq]`), case-sensitive as on POSIX;
//! CPython's `.pyc` to `.py` normalisation has no Rust counterpart and is left out. The matcher
//! backtracks only to the last `*`, so a match costs at most pattern length times name length
//! however many stars the pattern has.

use alloc::string::String;
use alloc::vec::Vec;

use crate::snapshot::{Frame, Snapshot, Trace, Traceback};

/// Matches traces by file name pattern, line and domain: Python's `tracemalloc.Filter`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Whether matching traces are kept (`true`) or dropped (`false`).
    pub inclusive: bool,
    /// A `fnmatch` glob on the frame's file name.
    pub filename_pattern: String,
    /// Only this line matches, when set.
    pub lineno: Option<u32>,
    /// Whether any frame of the traceback may match, rather than only the most recent one.
    pub all_frames: bool,
    /// Only traces of this domain match, when set.
    pub domain: Option<u32>,
}

impl Filter {
    /// A filter on `filename_pattern` for any line, most recent frame only, any domain.
    pub fn new(inclusive: bool, filename_pattern: &str) -> Filter {
        Filter {
            inclusive,
            filename_pattern: String::from(filename_pattern),
            lineno: None,
            all_frames: false,
            domain: None,
        }
    }

    /// The same filter restricted to line `lineno`.
    pub fn with_lineno(mut self, lineno: u32) -> Filter {
        self.lineno = Some(lineno);
        self
    }

    /// The same filter checking every frame of a traceback when `all_frames` is true.
    pub fn with_all_frames(mut self, all_frames: bool) -> Filter {
        self.all_frames = all_frames;
        self
    }

    /// The same filter restricted to traces of `domain`.
    pub fn with_domain(mut self, domain: u32) -> Filter {
        self.domain = Some(domain);
        self
    }

    /// Python's `Filter._match_frame`: whether a frame at `filename:lineno` passes the filter.
    pub fn match_frame(&self, filename: &str, lineno: u32) -> bool {
        Compiled::new(self).match_frame_impl(filename, lineno) ^ !self.inclusive
    }

    /// Python's `Filter._match_traceback`: whether a traceback passes (ignoring the domain).
    pub fn match_traceback(&self, traceback: &Traceback) -> bool {
        Compiled::new(self).match_traceback(&traceback.frames)
    }
}

/// Matches traces by domain: Python's `tracemalloc.DomainFilter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomainFilter {
    /// Whether matching traces are kept (`true`) or dropped (`false`).
    pub inclusive: bool,
    /// The domain that matches.
    pub domain: u32,
}

impl DomainFilter {
    /// A filter on `domain`.
    pub fn new(inclusive: bool, domain: u32) -> DomainFilter {
        DomainFilter { inclusive, domain }
    }
}

/// Either kind of filter, as `Snapshot.filter_traces()` takes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TraceFilter {
    /// A file name, line and domain filter.
    Filter(Filter),
    /// A domain filter.
    Domain(DomainFilter),
}

impl TraceFilter {
    /// Whether the filter keeps matching traces.
    pub fn inclusive(&self) -> bool {
        match self {
            TraceFilter::Filter(f) => f.inclusive,
            TraceFilter::Domain(f) => f.inclusive,
        }
    }

    /// Python's `_match`: whether a trace of `domain` with `traceback` passes the filter.
    pub fn matches(&self, domain: u32, traceback: &Traceback) -> bool {
        match self {
            TraceFilter::Filter(f) => {
                let compiled = Compiled::new(f);
                compiled.match_trace(domain, || compiled.match_traceback(&traceback.frames))
            }
            TraceFilter::Domain(f) => (domain == f.domain) ^ !f.inclusive,
        }
    }
}

impl From<Filter> for TraceFilter {
    fn from(filter: Filter) -> TraceFilter {
        TraceFilter::Filter(filter)
    }
}

impl From<DomainFilter> for TraceFilter {
    fn from(filter: DomainFilter) -> TraceFilter {
        TraceFilter::Domain(filter)
    }
}

/// A [`Filter`] with its pattern parsed once.
struct Compiled<'f> {
    filter: &'f Filter,
    pattern: Pattern,
}

impl<'f> Compiled<'f> {
    fn new(filter: &'f Filter) -> Compiled<'f> {
        Compiled {
            filter,
            pattern: Pattern::new(&filter.filename_pattern),
        }
    }

    fn match_frame_impl(&self, filename: &str, lineno: u32) -> bool {
        let line_matches = self.filter.lineno.is_none() || self.filter.lineno == Some(lineno);
        self.pattern.matches(filename) && line_matches
    }

    /// Frames most recent first; none reads as CPython's single `<unknown>:0` frame.
    fn match_traceback(&self, frames: &[Frame]) -> bool {
        let unknown = [Frame::unknown()];
        let frames = if frames.is_empty() {
            &unknown[..]
        } else {
            frames
        };
        let inclusive = self.filter.inclusive;
        if self.filter.all_frames {
            if frames
                .iter()
                .any(|f| self.match_frame_impl(&f.filename, f.lineno))
            {
                inclusive
            } else {
                !inclusive
            }
        } else {
            self.match_frame_impl(&frames[0].filename, frames[0].lineno) ^ !inclusive
        }
    }

    fn match_trace(&self, domain: u32, traceback_matches: impl FnOnce() -> bool) -> bool {
        let res = traceback_matches();
        match self.filter.domain {
            Some(d) if self.filter.inclusive => res && domain == d,
            Some(d) => res || domain != d,
            None => res,
        }
    }
}

/// Whether `name` matches the glob `pattern` as Python's `fnmatch.fnmatchcase` decides it:
/// `*` any run of characters (`/` included), `?` one character, `[seq]` one character of the
/// set (ranges like `a-z`; `]` first is a member), `[!seq]` one character outside it; a `[`
/// without its `]` is a literal.
pub fn fnmatch(name: &str, pattern: &str) -> bool {
    Pattern::new(pattern).matches(name)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Char(char),
    /// Inclusive ranges; a range whose start lies after its end matches nothing.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Char(x) => *x == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) ^ negated
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '[' => match parse_class(&chars, i) {
                    Some((token, next)) => {
                        tokens.push(token);
                        i = next;
                    }
                    None => tokens.push(Token::Char('[')),
                },
                c => tokens.push(Token::Char(c)),
            }
        }
        Pattern { tokens }
    }

    /// Greedy matching that remembers only the last `*`: when a later token fails, that star
    /// takes one more character. Earlier stars never need to, so this is exact.
    fn matches(&self, text: &str) -> bool {
        let tokens = &self.tokens;
        let (mut p, mut s) = (0, 0);
        // (token after the star, text position the star's run ends at)
        let mut star: Option<(usize, usize)> = None;
        loop {
            let c = text[s..].chars().next();
            match (tokens.get(p), c) {
                (Some(Token::Star), _) => {
                    star = Some((p + 1, s));
                    p += 1;
                }
                (Some(token), Some(c)) if token.matches(c) => {
                    p += 1;
                    s += c.len_utf8();
                }
                (None, None) => return true,
                _ => {
                    let Some((after, end)) = star else {
                        return false;
                    };
                    let Some(c) = text[end..].chars().next() else {
                        return false;
                    };
                    star = Some((after, end + c.len_utf8()));
                    p = after;
                    s = end + c.len_utf8();
                }
            }
        }
    }
}

/// Parses a `[...]` set whose body starts at `start`; `None` when it has no closing `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut j = start;
    let negated = chars.get(j) == Some(&'!');
    if negated {
        j += 1;
    }
    let body_start = j;
    // A `]` right after `[` or `[!` is a member, not the end.
    if chars.get(j) == Some(&']') {
        j += 1;
    }
    while j < chars.len() && chars[j] != ']' {
        j += 1;
    }
    if j >= chars.len() {
        return None;
    }
    let body = &chars[body_start..j];
    let mut ranges = Vec::new();
    let mut k = 0;
    while k < body.len() {
        // `x-y` is a range unless the `-` is last; a `-` first or last is a member.
        if k + 2 < body.len() && body[k + 1] == '-' {
            ranges.push((body[k], body[k + 2]));
            k += 3;
        } else {
            ranges.push((body[k], body[k]));
            k += 1;
        }
    }
    Some((Token::Class { negated, ranges }, j + 1))
}

impl Snapshot {
    /// A new snapshot with only the traces the filters let through: Python's
    /// `Snapshot.filter_traces()`. Inclusive filters are OR-ed, exclusive ones AND-ed; no
    /// filter copies the snapshot. Tracebacks no kept trace uses are dropped; the counters
    /// still describe the tracer when the snapshot was taken.
    pub fn filter_traces(&self, filters: &[TraceFilter]) -> Snapshot {
        if filters.is_empty() {
            return self.clone();
        }
        enum Prepared<'f> {
            File(Compiled<'f>),
            Domain(DomainFilter),
        }
        let prepared: Vec<Prepared<'_>> = filters
            .iter()
            .map(|f| match f {
                TraceFilter::Filter(f) => Prepared::File(Compiled::new(f)),
                TraceFilter::Domain(d) => Prepared::Domain(*d),
            })
            .collect();
        // Per filter and traceback: 0 not computed yet, 1 no match, 2 match.
        let n = self.tracebacks.len();
        let mut cache = alloc::vec![0u8; n * prepared.len()];
        let mut matches = |i: usize, filter: &Prepared<'_>, trace: &Trace| -> bool {
            match filter {
                Prepared::Domain(d) => (trace.domain == d.domain) ^ !d.inclusive,
                Prepared::File(c) => c.match_trace(trace.domain, || {
                    let tb = trace.traceback as usize;
                    let Some(traceback) = self.tracebacks.get(tb) else {
                        return c.match_traceback(&[]);
                    };
                    let slot = &mut cache[i * n + tb];
                    if *slot == 0 {
                        *slot = 1 + u8::from(c.match_traceback(&traceback.frames));
                    }
                    *slot == 2
                }),
            }
        };
        let mut keep = |trace: &Trace| -> bool {
            let mut any_inclusive = false;
            let mut included = false;
            for (i, (filter, original)) in prepared.iter().zip(filters).enumerate() {
                if original.inclusive() {
                    any_inclusive = true;
                    if !included && matches(i, filter, trace) {
                        included = true;
                    }
                } else if !matches(i, filter, trace) {
                    return false;
                }
            }
            included || !any_inclusive
        };

        let mut out = Snapshot {
            traceback_limit: self.traceback_limit,
            counters: self.counters,
            tracer_memory: self.tracer_memory,
            sample_interval: self.sample_interval,
            build_id: self.build_id.clone(),
            ..Snapshot::default()
        };
        let mut remap = alloc::vec![u32::MAX; n];
        for trace in &self.traces {
            if !keep(trace) {
                continue;
            }
            let old = trace.traceback as usize;
            let traceback = match remap.get_mut(old) {
                Some(new) => {
                    if *new == u32::MAX {
                        *new = out.tracebacks.len() as u32;
                        out.tracebacks.push(self.tracebacks[old].clone());
                        out.addresses
                            .push(self.addresses.get(old).cloned().unwrap_or_default());
                    }
                    *new
                }
                None => continue,
            };
            out.traces.push(Trace {
                traceback,
                ..*trace
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_jokers_match_like_python() {
        assert!(!fnmatch("abc", ""));
        assert!(!fnmatch("", "abc"));
        assert!(fnmatch("", ""));
        assert!(fnmatch("", "*"));
        assert!(fnmatch("abc", "abc"));
        assert!(!fnmatch("abc", "abcd"));
        assert!(!fnmatch("abc", "def"));
        assert!(fnmatch("abc", "a*"));
        assert!(fnmatch("abc", "abc*"));
        assert!(!fnmatch("abc", "b*"));
        assert!(!fnmatch("abc", "abcd*"));
        assert!(fnmatch("abc", "a*c"));
        assert!(fnmatch("abcdcx", "a*cx"));
        assert!(!fnmatch("abb", "a*c"));
        assert!(!fnmatch("abcdce", "a*cx"));
        assert!(fnmatch("abcde", "a*c*e"));
        assert!(fnmatch("abcbdefeg", "a*bd*eg"));
        assert!(!fnmatch("abcdd", "a*c*e"));
        assert!(!fnmatch("abcbdefef", "a*bd*eg"));
        // POSIX: case-sensitive, no alternate separator.
        assert!(!fnmatch("aBC", "ABc"));
        assert!(!fnmatch("aBcDe", "Ab*dE"));
        assert!(!fnmatch("a/b", "a\\b"));
        assert!(!fnmatch("a\\b", "a/b"));
    }

    #[test]
    fn fnmatch_question_mark_and_star_cross_slashes_and_utf8() {
        assert!(fnmatch("src/a/b.rs", "src/*.rs"));
        assert!(fnmatch("é.rs", "?.rs"));
        assert!(!fnmatch("ab.rs", "?.rs"));
        assert!(fnmatch("x\ny", "x*y"));
    }

    #[test]
    fn fnmatch_sets_follow_python_translate() {
        assert!(fnmatch("b", "[abc]"));
        assert!(!fnmatch("d", "[abc]"));
        assert!(fnmatch("d", "[!abc]"));
        assert!(!fnmatch("a", "[!abc]"));
        assert!(fnmatch("m", "[a-z]"));
        assert!(!fnmatch("M", "[a-z]"));
        // `]` first is a member; `-` first or last is a member.
        assert!(fnmatch("]", "[]]"));
        assert!(fnmatch("]", "[!a]"));
        assert!(!fnmatch("]", "[!]]"));
        assert!(fnmatch("-", "[a-]"));
        assert!(fnmatch("-", "[-a]"));
        // `a-b-c` is the range a-b, then `-` and `c`.
        assert!(fnmatch("-", "[a-b-c]"));
        assert!(fnmatch("c", "[a-b-c]"));
        assert!(!fnmatch("bb", "[a-b-c]"));
        // A reversed range matches nothing; negated, anything.
        assert!(!fnmatch("a", "[z-a]"));
        assert!(!fnmatch("z", "[z-a]"));
        assert!(fnmatch("q", "[!z-a]"));
        assert!(fnmatch("b", "[az-ab]"));
        // No closing bracket: a literal `[`.
        assert!(fnmatch("[ab", "[ab"));
        assert!(fnmatch("[!]", "[!]"));
        // Backslash is no escape.
        assert!(fnmatch("\\", "[\\]"));
    }

    #[test]
    fn fnmatch_many_stars_stay_fast() {
        let name = "a".repeat(10_000);
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!fnmatch(&name, pattern));
    }

    #[test]
    fn filter_builders_set_python_defaults() {
        let f = Filter::new(true, "abc");
        assert!(f.inclusive && !f.all_frames);
        assert_eq!((f.lineno, f.domain), (None, None));
        let f = Filter::new(false, "test.py")
            .with_lineno(123)
            .with_all_frames(true)
            .with_domain(4);
        assert_eq!(
            (f.lineno, f.all_frames, f.domain),
            (Some(123), true, Some(4))
        );
    }
}
