//! Neighbours in one cell of shadow memory, with the 32-byte span glibc's blocks get (see
//! `paired/mod.rs`): the arena's blocks come after the span was chosen.

mod paired;

#[test]
fn neighbours_in_one_span_are_both_traced_with_32_byte_cells() {
    paired::neighbours_in_one_span_are_both_traced(false);
}
