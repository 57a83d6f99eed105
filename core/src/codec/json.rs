//! The JSON snapshot form, for interchange with other tools (feature `json`).
//!
//! One object per trace with its frames spelled out, most recent call first as in CPython's raw
//! traces:
//!
//! ```json
//! {"format": "tracemalloc-snapshot", "version": 1, "traceback_limit": 16, "traces": [
//!   {"domain": 0, "size": 1000, "total_nframe": 2, "frames": [
//!     {"filename": "src/b.rs", "lineno": 2, "function": "app::b"},
//!     {"filename": "src/a.rs", "lineno": 1}]}]}
//! ```
//!
//! `function` is optional, and readers ignore fields they do not know. We also write the
//! optional `counters`, `tracer_memory`, `sample_interval` and `build_id` (hex, as `readelf`
//! shows it). Raw addresses are not part of this form: resolve a snapshot before converting it.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::build_id::{parse_hex, Hex, MAX_LEN};
use crate::sampling::scaled_total;
use crate::snapshot::{snapshot_from_traces, Frame, Snapshot, Traceback};
use crate::tracer::Counters;

/// The value of the `format` field.
pub const FORMAT: &str = "tracemalloc-snapshot";
/// The version of the JSON form this crate writes and reads.
pub const VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
struct FileDoc {
    format: String,
    version: u64,
    traceback_limit: u16,
    traces: Vec<TraceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counters: Option<CountersDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracer_memory: Option<u64>,
    /// Mean bytes between sampled blocks; absent or 0: every block was traced.
    #[serde(default, skip_serializing_if = "is_zero")]
    sample_interval: u64,
    /// The program's GNU build id in hex; absent or null: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build_id: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct TraceDoc {
    domain: u32,
    size: u64,
    total_nframe: u16,
    frames: Vec<FrameDoc>,
}

#[derive(Serialize, Deserialize)]
struct FrameDoc {
    filename: String,
    lineno: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CountersDoc {
    current: u64,
    peak: u64,
    traces: u64,
    untraced_blocks: u64,
    untraced_bytes: u64,
}

/// Why a JSON snapshot could not be read.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON, or not of the expected shape.
    Syntax(serde_json::Error),
    /// The `format` field names another format.
    WrongFormat(String),
    /// A version of the JSON form this crate does not read.
    UnsupportedVersion(u64),
    /// The `build_id` field is not an even number of hex digits, or longer than
    /// [`MAX_LEN`] bytes.
    InvalidBuildId(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(e) => write!(f, "invalid JSON snapshot: {e}"),
            JsonError::WrongFormat(name) => {
                write!(
                    f,
                    "not a JSON snapshot: format is {name:?}, expected {FORMAT:?}"
                )
            }
            JsonError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported JSON snapshot version {v} (this build reads {VERSION})"
                )
            }
            JsonError::InvalidBuildId(id) if id.len() > 2 * MAX_LEN => write!(
                f,
                "invalid JSON snapshot: build_id is longer than {MAX_LEN} bytes"
            ),
            JsonError::InvalidBuildId(id) => {
                write!(f, "invalid JSON snapshot: build_id {id:?} is not hex bytes")
            }
        }
    }
}

impl Snapshot {
    /// The snapshot as JSON (compact, one line).
    pub fn to_json(&self) -> String {
        let traces = self
            .traces
            .iter()
            .map(|trace| {
                let traceback = self.traceback_of(trace);
                TraceDoc {
                    domain: trace.domain,
                    size: trace.size,
                    total_nframe: traceback.total_nframe,
                    frames: traceback
                        .frames
                        .iter()
                        .map(|f| FrameDoc {
                            filename: String::from(&*f.filename),
                            lineno: f.lineno,
                            function: f.function.as_deref().map(String::from),
                        })
                        .collect(),
                }
            })
            .collect();
        let c = &self.counters;
        let doc = FileDoc {
            format: String::from(FORMAT),
            version: VERSION,
            traceback_limit: self.traceback_limit,
            traces,
            counters: Some(CountersDoc {
                current: c.current,
                peak: c.peak,
                traces: c.traces,
                untraced_blocks: c.untraced_blocks,
                untraced_bytes: c.untraced_bytes,
            }),
            tracer_memory: Some(self.tracer_memory),
            sample_interval: self.sample_interval,
            build_id: (!self.build_id.is_empty()).then(|| Hex(&self.build_id).to_string()),
        };
        // Serializing plain structs of strings and numbers into memory cannot fail.
        serde_json::to_string(&doc).unwrap_or_default()
    }

    /// Reads a snapshot from its JSON form. Equal tracebacks are shared again and equal file
    /// names stored once. Without `counters`, they are computed from the traces.
    pub fn from_json(json: &str) -> Result<Snapshot, JsonError> {
        let doc: FileDoc = serde_json::from_str(json).map_err(JsonError::Syntax)?;
        if doc.format != FORMAT {
            return Err(JsonError::WrongFormat(doc.format));
        }
        if doc.version != VERSION {
            return Err(JsonError::UnsupportedVersion(doc.version));
        }
        let build_id = match doc.build_id {
            None => Vec::new(),
            Some(hex) => match parse_hex(&hex) {
                Some(id) if id.len() <= MAX_LEN => id,
                _ => return Err(JsonError::InvalidBuildId(hex)),
            },
        };
        let mut strings: HashMap<String, Arc<str>> = HashMap::new();
        let mut intern = |s: String| -> Arc<str> {
            strings
                .entry(s)
                .or_insert_with_key(|s| Arc::from(s.as_str()))
                .clone()
        };
        let traces: Vec<(u32, u64, Traceback)> = doc
            .traces
            .into_iter()
            .map(|t| {
                let frames = t
                    .frames
                    .into_iter()
                    .map(|f| Frame {
                        filename: intern(f.filename),
                        lineno: f.lineno,
                        function: f.function.map(&mut intern),
                    })
                    .collect();
                (
                    t.domain,
                    t.size,
                    Traceback {
                        frames,
                        total_nframe: t.total_nframe,
                    },
                )
            })
            .collect();
        let mut snapshot = snapshot_from_traces(doc.traceback_limit, traces);
        if doc.sample_interval != 0 && doc.counters.is_none() {
            // Sampled traces stand for more bytes than their own, as in a snapshot taken here.
            let sizes = snapshot.traces.iter().map(|t| t.size);
            let current = scaled_total(sizes, doc.sample_interval);
            snapshot.counters.current = current;
            snapshot.counters.peak = current;
        }
        if let Some(c) = doc.counters {
            snapshot.counters = Counters {
                current: c.current,
                peak: c.peak,
                traces: c.traces,
                untraced_blocks: c.untraced_blocks,
                untraced_bytes: c.untraced_bytes,
            };
        }
        snapshot.tracer_memory = doc.tracer_memory.unwrap_or(0);
        snapshot.sample_interval = doc.sample_interval;
        snapshot.build_id = build_id;
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::scaled_size;

    const ISSUE_EXAMPLE: &str = r#"{"format": "tracemalloc-snapshot", "version": 1, "traceback_limit": 16, "traces": [{"domain": 0, "size": 1000, "total_nframe": 2, "frames": [{"filename": "src/b.rs", "lineno": 2, "function": "app::b"}, {"filename": "src/a.rs", "lineno": 1}]}]}"#;

    /// Found by fuzzing (`core/fuzz`): sizes whose total overflows a `u64` panicked in the
    /// decoder; the totals saturate instead.
    #[test]
    fn forged_sizes_saturate_the_totals() {
        let huge = r#"{"format":"tracemalloc-snapshot","version":1,"traceback_limit":1,"traces":[{"domain":0,"size":18446744073709551615,"total_nframe":0,"frames":[]},{"domain":0,"size":1,"total_nframe":0,"frames":[]}]}"#;
        let s = Snapshot::from_json(huge).unwrap();
        assert_eq!(s.counters.current, u64::MAX);
        assert_eq!(s.traces.len(), 2);
        let huge_interval = r#"{"format":"tracemalloc-snapshot","version":1,"traceback_limit":1,"sample_interval":18446744073709551615,"traces":[{"domain":0,"size":1,"total_nframe":0,"frames":[]},{"domain":0,"size":1,"total_nframe":0,"frames":[]}]}"#;
        let s = Snapshot::from_json(huge_interval).unwrap();
        assert_eq!(s.counters.current, u64::MAX);
        assert_eq!(s.counters.peak, u64::MAX);
    }

    #[test]
    fn reads_the_documented_shape() {
        let s = Snapshot::from_json(ISSUE_EXAMPLE).unwrap();
        assert_eq!(s.traceback_limit, 16);
        assert_eq!(s.traces.len(), 1);
        let tb = s.traceback_of(&s.traces[0]);
        assert_eq!(tb.total_nframe, 2);
        assert_eq!(tb.frames[0].function.as_deref(), Some("app::b"));
        assert_eq!(tb.frames[1], Frame::new("src/a.rs", 1));
        assert_eq!(s.counters.current, 1000);
    }

    #[test]
    fn writes_the_documented_shape() {
        let s = Snapshot::from_json(ISSUE_EXAMPLE).unwrap();
        let json = s.to_json();
        assert!(json.starts_with(
            r#"{"format":"tracemalloc-snapshot","version":1,"traceback_limit":16,"traces":[{"domain":0,"size":1000,"total_nframe":2,"frames":[{"filename":"src/b.rs","lineno":2,"function":"app::b"},{"filename":"src/a.rs","lineno":1}]}]"#
        ), "{json}");
    }

    #[test]
    fn the_sample_interval_round_trips_and_defaults_to_zero() {
        let mut s = Snapshot::from_json(ISSUE_EXAMPLE).unwrap();
        assert_eq!(s.sample_interval, 0);
        assert!(!s.to_json().contains("sample_interval"));
        s.sample_interval = 524_288;
        let back = Snapshot::from_json(&s.to_json()).unwrap();
        assert_eq!(back.sample_interval, 524_288);
    }

    #[test]
    fn the_build_id_round_trips_as_hex_and_defaults_to_unknown() {
        let mut s = Snapshot::from_json(ISSUE_EXAMPLE).unwrap();
        assert!(s.build_id.is_empty());
        assert!(!s.to_json().contains("build_id"));
        s.build_id = alloc::vec![0x0f, 0x99, 0x7a, 0xaf];
        let json = s.to_json();
        assert!(json.contains(r#""build_id":"0f997aaf""#), "{json}");
        assert_eq!(Snapshot::from_json(&json).unwrap().build_id, s.build_id);
        let null = json.replace(r#""0f997aaf""#, "null");
        assert!(Snapshot::from_json(&null).unwrap().build_id.is_empty());
        let long = json.replace("0f997aaf", &"ab".repeat(MAX_LEN + 1));
        let err = Snapshot::from_json(&long).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid JSON snapshot: build_id is longer than 255 bytes"
        );
        let odd = json.replace("0f997aaf", "0f997aa");
        let err = Snapshot::from_json(&odd).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid JSON snapshot: build_id "0f997aa" is not hex bytes"#
        );
    }

    #[test]
    fn sampled_traces_without_counters_count_the_bytes_they_stand_for() {
        let json = ISSUE_EXAMPLE.replace(r#""traces""#, r#""sample_interval": 524288, "traces""#);
        let s = Snapshot::from_json(&json).unwrap();
        assert_eq!(s.counters.current, scaled_size(1000, 524_288));
        assert!(s.counters.current > 500_000, "{}", s.counters.current);
        assert_eq!(s.counters.peak, s.counters.current);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = r#"{"format": "tracemalloc-snapshot", "version": 1, "traceback_limit": 1,
            "tool": "x", "traces": [{"domain": 0, "size": 1, "total_nframe": 1, "thread": 3,
            "frames": [{"filename": "a", "lineno": 1, "column": 4}]}]}"#;
        assert_eq!(Snapshot::from_json(json).unwrap().traces.len(), 1);
    }

    #[test]
    fn wrong_format_and_version_are_typed_errors() {
        let other = ISSUE_EXAMPLE.replace("tracemalloc-snapshot", "heaptrack");
        assert!(matches!(
            Snapshot::from_json(&other),
            Err(JsonError::WrongFormat(f)) if f == "heaptrack"
        ));
        let v2 = ISSUE_EXAMPLE.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            Snapshot::from_json(&v2),
            Err(JsonError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Snapshot::from_json("{\"format\": 1"),
            Err(JsonError::Syntax(_))
        ));
    }
}
