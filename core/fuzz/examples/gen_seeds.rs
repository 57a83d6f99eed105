//! Writes valid seed snapshots into the corpus directories:
//! `cargo run --example gen_seeds -- corpus` from `core/fuzz`.
use std::fs;
use std::sync::Arc;

use tracemalloc_core::codec::binary::{OLDEST_VERSION, VERSION};
use tracemalloc_core::snapshot::snapshot_from_traces;
use tracemalloc_core::{
    encode_tracer, DeviceInfo, Frame, Snapshot, Traceback, Tracer, TracerArrays,
};

fn sample() -> Snapshot {
    let mut tb = Traceback::new(vec![
        Frame {
            function: Some(Arc::from("app::b")),
            ..Frame::new("src/b.rs", 2)
        },
        Frame::new("src/a.rs", 1),
    ]);
    tb.total_nframe = 7;
    let mut s = snapshot_from_traces(
        16,
        [
            (0, 1000, tb.clone()),
            (3, 24, Traceback::new(vec![Frame::new("src/ünï.rs", 9)])),
            (0, 5, tb),
            (1, 1 << 40, Traceback::new(vec![Frame::unknown()])),
        ],
    );
    s.addresses[0] = vec![0x0800_1234, 0x0800_1000];
    s.counters.untraced_blocks = 2;
    s.counters.untraced_bytes = 300;
    s.tracer_memory = 4096;
    s.sample_interval = 65536;
    s.build_id = vec![0x0f, 0x99, 0x7a, 0xaf];
    s
}

fn device_stream() -> Vec<u8> {
    let mut arrays = TracerArrays::<16, 8, 32>::new();
    let mut tracer = Tracer::new(arrays.storage());
    tracer.record_alloc(0, 0x2000_0100, 64, &[0x0800_1234, 0x0800_0400], 2);
    tracer.record_alloc(0, 0x2000_0200, 16, &[0x0800_1234, 0x0800_0400], 2);
    tracer.record_alloc(2, 0x2000_0300, 100, &[0x0800_2000], 5);
    let mut out = Vec::new();
    let device = DeviceInfo {
        traceback_limit: 16,
        build_id: &[0x0f, 0x99, 0x7a, 0xaf],
        tracer_memory: tracer.memory_bytes(),
    };
    encode_tracer(&tracer, &device, &mut out);
    out
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    for t in ["load_bytes", "load_bytes_crc", "from_json"] {
        fs::create_dir_all(format!("{dir}/{t}")).unwrap();
    }
    let binaries = [
        ("sample", sample().dump_bytes()),
        ("empty", Snapshot::default().dump_bytes()),
        ("device", device_stream()),
    ];
    for (name, bytes) in &binaries {
        Snapshot::load_bytes(bytes).expect("seed decodes");
        fs::write(format!("{dir}/load_bytes/{name}.bin"), bytes).unwrap();
        // The body alone, after the byte that selects this version: what load_bytes_crc
        // frames again.
        let mut framed = vec![VERSION - OLDEST_VERSION];
        framed.extend_from_slice(&bytes[7..bytes.len() - 4]);
        fs::write(format!("{dir}/load_bytes_crc/{name}.bin"), framed).unwrap();
    }
    let jsons = [
        ("sample", sample().to_json()),
        ("empty", Snapshot::default().to_json()),
        ("documented", r#"{"format": "tracemalloc-snapshot", "version": 1, "traceback_limit": 16, "traces": [{"domain": 0, "size": 1000, "total_nframe": 2, "frames": [{"filename": "src/b.rs", "lineno": 2, "function": "app::b"}, {"filename": "src/a.rs", "lineno": 1}]}]}"#.to_string()),
        ("sampled_no_counters", r#"{"format":"tracemalloc-snapshot","version":1,"traceback_limit":1,"sample_interval":524288,"tool":"x","traces":[{"domain":0,"size":512,"total_nframe":1,"frames":[{"filename":"a","lineno":1,"column":4}]}]}"#.to_string()),
    ];
    for (name, text) in &jsons {
        Snapshot::from_json(text).expect("seed decodes");
        fs::write(format!("{dir}/from_json/{name}.json"), text).unwrap();
    }
}
