//! The allocation-heavy workloads every variant runs.
//!
//! Each workload is plain code with no knowledge of the allocator underneath: the binaries
//! install their own `#[global_allocator]` and call these. A workload's setup (building the
//! JSON text) happens in [`Workload::prepare`], outside the timed part; [`Prepared::run`] is
//! the timed part and returns a checksum so the optimiser cannot drop the work.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;

/// One of the benchmark workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `HashMap<String, Vec<u32>>`: 300 k string keys looked up five times, small `Vec`s
    /// (1.8 M allocations, 0.3 M reallocations).
    Hashmap,
    /// `serde_json::Value` parse and drop of a ~9 MB generated document, twice.
    Json,
    /// Producer/consumer over a bounded channel: boxed messages allocated on one thread and
    /// dropped on the other (every free is a cross-thread free).
    Channel,
    /// Binary trees of depth 18 built recursively and dropped, twelve times (3.1 M allocations at
    /// stack depths up to 18 frames beyond the caller).
    Tree,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::Hashmap,
        Workload::Json,
        Workload::Channel,
        Workload::Tree,
    ];

    /// The workload's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hashmap => "hashmap",
            Workload::Json => "json",
            Workload::Channel => "channel",
            Workload::Tree => "tree",
        }
    }

    /// Whether the workload uses two threads by itself (its 2-thread figure is its only one).
    pub fn is_multithreaded(self) -> bool {
        self == Workload::Channel
    }

    /// Does the untimed setup.
    pub fn prepare(self) -> Prepared {
        match self {
            Workload::Hashmap => Prepared::Hashmap,
            Workload::Json => Prepared::Json(json_document(JSON_RECORDS)),
            Workload::Channel => Prepared::Channel,
            Workload::Tree => Prepared::Tree,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (hashmap, json, channel, tree)"))
    }
}

/// A workload with its setup done.
pub enum Prepared {
    /// See [`Workload::Hashmap`].
    Hashmap,
    /// See [`Workload::Json`]; holds the document text.
    Json(String),
    /// See [`Workload::Channel`].
    Channel,
    /// See [`Workload::Tree`].
    Tree,
}

impl Prepared {
    /// Runs the timed part; returns a checksum.
    pub fn run(&self) -> u64 {
        match self {
            Prepared::Hashmap => hashmap(HASHMAP_KEYS, HASHMAP_ROUNDS),
            Prepared::Json(doc) => (0..JSON_PARSES).map(|_| json_parse(doc)).sum(),
            Prepared::Channel => channel(CHANNEL_MESSAGES),
            Prepared::Tree => (0..TREES).map(|_| tree(TREE_DEPTH)).sum(),
        }
    }
}

const HASHMAP_KEYS: u32 = 300_000;
const HASHMAP_ROUNDS: u32 = 5;
const JSON_RECORDS: usize = 40_000;
const JSON_PARSES: usize = 2;
const CHANNEL_MESSAGES: u32 = 400_000;
const TREE_DEPTH: u32 = 18;
const TREES: u32 = 12;

/// String keys into a `HashMap`, each round formatting every key afresh (one allocation, freed
/// at once when the key exists) and pushing onto its `Vec` (allocated in the first round,
/// reallocated once when it outgrows 4 elements).
pub fn hashmap(keys: u32, rounds: u32) -> u64 {
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for round in 0..rounds {
        for i in 0..keys {
            // Sized up front: `format!` would allocate, then reallocate when the digits land.
            let mut key = String::with_capacity(16);
            let _ = write!(key, "user:{i:08}");
            map.entry(key).or_default().push(i ^ round);
        }
    }
    let checksum = map
        .values()
        .map(|v| v.iter().map(|&x| u64::from(x)).sum::<u64>())
        .sum::<u64>();
    drop(black_box(map));
    checksum
}

/// A JSON array of `records` objects with nested objects, arrays and strings.
pub fn json_document(records: usize) -> String {
    let mut doc = String::with_capacity(records * 240);
    doc.push('[');
    for i in 0..records {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            concat!(
                r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":{a},"#,
                r#""tags":["t{t0}","t{t1}","t{t2}"],"scores":[{s0},{s1},{s2},{s3}],"#,
                r#""address":{{"street":"{i} Main Street","city":"City {c}","zip":"{z:05}"}}}}"#
            ),
            i = i,
            a = i % 3 == 0,
            t0 = i % 7,
            t1 = i % 11,
            t2 = i % 13,
            s0 = i % 100,
            s1 = (i * 7) % 100,
            s2 = (i * 13) as f64 / 10.0,
            s3 = i % 5,
            c = i % 97,
            z = (i * 31) % 100_000,
        ));
    }
    doc.push(']');
    doc
}

/// Parses `doc` into a `serde_json::Value` and drops it.
pub fn json_parse(doc: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(doc).expect("generated JSON parses");
    let n = value.as_array().map_or(0, Vec::len) as u64;
    drop(black_box(value));
    n
}

/// One message of the channel workload: three blocks.
struct Message {
    id: u32,
    payload: Vec<u32>,
    label: String,
}

/// A producer thread allocates `messages` boxed messages and sends them over a bounded channel;
/// the consumer (this thread) reads and drops them, so every free is a cross-thread free.
pub fn channel(messages: u32) -> u64 {
    let (tx, rx) = mpsc::sync_channel::<Box<Message>>(1024);
    let producer = thread::spawn(move || {
        for id in 0..messages {
            let payload = (0..(id % 16 + 1)).collect::<Vec<u32>>();
            let label = format!("msg-{id}");
            if tx.send(Box::new(Message { id, payload, label })).is_err() {
                break;
            }
        }
    });
    let mut checksum = 0u64;
    for message in rx {
        checksum +=
            u64::from(message.id) + message.payload.len() as u64 + message.label.len() as u64;
        drop(black_box(message));
    }
    producer.join().expect("producer thread");
    checksum
}

/// A node of the tree workload.
struct Node {
    value: u64,
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

#[inline(never)]
fn build(depth: u32, value: u64) -> Option<Box<Node>> {
    if depth == 0 {
        return None;
    }
    Some(Box::new(Node {
        value,
        left: build(depth - 1, value * 2),
        right: build(depth - 1, value * 2 + 1),
    }))
}

fn sum(node: &Option<Box<Node>>) -> u64 {
    node.as_ref()
        .map_or(0, |n| n.value + sum(&n.left) + sum(&n.right))
}

/// Builds a complete binary tree of `depth` levels recursively (2^depth - 1 boxed nodes), sums
/// it and drops it.
pub fn tree(depth: u32) -> u64 {
    let root = build(depth, 1);
    let checksum = sum(&root);
    drop(black_box(root));
    checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_workloads_compute_their_checksums() {
        assert_eq!(tree(3), 1 + 2 + 3 + 4 + 5 + 6 + 7);
        assert_eq!(hashmap(10, 2), (0..10u64).map(|i| i + (i ^ 1)).sum::<u64>());
        assert_eq!(json_parse(&json_document(5)), 5);
        assert_eq!(channel(3), 3 + 1 + 2 + 3 + 3 * 5);
    }

    #[test]
    fn workloads_parse_from_their_names() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert!("nope".parse::<Workload>().is_err());
    }
}
