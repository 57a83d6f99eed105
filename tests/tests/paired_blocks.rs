//! Neighbours in one span of shadow memory, whose cells lie in planes, as an allocator of small
//! blocks side by side gets them (see `paired/mod.rs`).

mod paired;

#[test]
fn neighbours_in_one_span_are_both_traced_in_planes() {
    paired::neighbours_in_one_span_are_both_traced(true);
}
