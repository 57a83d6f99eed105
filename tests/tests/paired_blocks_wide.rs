//! Neighbours in one span of shadow memory, with the one cell per span glibc's blocks get (see
//! `paired/mod.rs`): the arena's blocks come after the layout was chosen.

mod paired;

#[test]
fn neighbours_in_one_span_are_both_traced_with_one_cell_per_span() {
    paired::neighbours_in_one_span_are_both_traced(false);
}
