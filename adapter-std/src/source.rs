//! Source lines under traceback frames, as Python's `linecache` provides them.

use std::collections::HashMap;
use std::path::Path;

use tracemalloc_core::Traceback;

/// Reads source files once and hands out their lines.
#[derive(Default)]
pub struct SourceLines {
    files: HashMap<String, Option<Vec<String>>>,
}

impl SourceLines {
    /// Line `lineno` (1-based) of `filename`, trimmed, if the file is readable: relative paths
    /// are tried against the current directory.
    pub fn line(&mut self, filename: &str, lineno: u32) -> Option<String> {
        let lines = self
            .files
            .entry(filename.to_owned())
            .or_insert_with(|| {
                std::fs::read_to_string(Path::new(filename))
                    .ok()
                    .map(|text| text.lines().map(|l| l.trim().to_owned()).collect())
            })
            .as_ref()?;
        let line = lines.get((lineno as usize).checked_sub(1)?)?;
        (!line.is_empty()).then(|| line.clone())
    }

    /// Python's `Traceback.format(limit)` with the source line under each frame.
    pub fn format(&mut self, traceback: &Traceback, limit: Option<i64>) -> Vec<String> {
        let cell = std::cell::RefCell::new(self);
        traceback.format_with_source(limit, false, &|file, line| {
            cell.borrow_mut().line(file, line)
        })
    }
}

/// Python's `Traceback.format(limit)` with source lines, read from the current directory.
pub fn format_traceback(traceback: &Traceback, limit: Option<i64>) -> Vec<String> {
    SourceLines::default().format(traceback, limit)
}
