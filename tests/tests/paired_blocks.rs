//! Neighbours in one span of shadow memory's cells, with the 16-byte span an allocator of small
//! blocks side by side gets, whose cells lie in two planes (see `paired/mod.rs`).

mod paired;

#[test]
fn neighbours_in_one_span_are_both_traced_with_16_byte_cells() {
    paired::neighbours_in_one_span_are_both_traced(true);
}
