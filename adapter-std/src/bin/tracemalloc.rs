//! The `tracemalloc` command; see [`tracemalloc::cli`].

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = tracemalloc::cli::run(args, &mut out);
    let flushed = std::io::Write::flush(&mut out);
    drop(out);
    match (result, flushed) {
        (Ok(()), Ok(())) => {}
        (Err(e), _) => {
            eprintln!("tracemalloc: {e}");
            std::process::exit(e.exit_code());
        }
        (Ok(()), Err(e)) => {
            eprintln!("tracemalloc: cannot write the report: {e}");
            std::process::exit(1);
        }
    }
}
