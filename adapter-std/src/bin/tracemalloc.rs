//! The `tracemalloc` command; see [`tracemalloc::cli`].

fn main() {
    use std::io::Write;

    use tracemalloc::cli::CliError;
    // Arguments as the system gives them: file names need not be UTF-8.
    let args = std::env::args_os().skip(1);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result =
        tracemalloc::cli::run(args, &mut out).and_then(|()| out.flush().map_err(CliError::Output));
    drop(out); // after a failed flush, its own retry fails quietly
    match result {
        Ok(()) => {}
        Err(e) if e.is_closed_pipe() => {} // the reader had what it wanted
        Err(e) => {
            // Not `eprintln!`, which panics when stderr cannot be written (`2>/dev/full`): the
            // exit status still tells what failed.
            let _ = writeln!(std::io::stderr(), "tracemalloc: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
