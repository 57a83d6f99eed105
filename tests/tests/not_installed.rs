//! Without the tracing allocator as the global allocator, `start` says so instead of pretending.

#[test]
fn start_without_the_global_allocator_is_an_error() {
    let err = tracemalloc::start(1).unwrap_err();
    assert!(matches!(err, tracemalloc::Error::NotInstalled), "{err}");
    assert!(!tracemalloc::is_tracing());
    assert!(err.to_string().contains("global_allocator"));
}
