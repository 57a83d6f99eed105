//! Neighbours in one cell of shadow memory, with the 16-byte span an allocator of small blocks
//! side by side gets (see `paired/mod.rs`).

mod paired;

#[test]
fn neighbours_in_one_cell_are_both_traced_with_16_byte_cells() {
    paired::neighbours_in_one_cell_are_both_traced(true);
}
