//! Call-stack capture on Cortex-M.
//!
//! With `-C force-frame-pointers=yes`, Thumb code keeps a chain of frame records in r7: the word
//! at `[r7]` is the caller's r7 and `[r7 + 4]` the function's return address (LR). Walking that
//! chain costs two loads a frame and needs no unwind tables. Functions built without frame
//! pointers (the precompiled `core` and `alloc`) leave r7 alone or use it as scratch, so the walk
//! skips them or stops early; it never reads outside the [`StackBounds`] the firmware gives, and
//! it stops as soon as r7 stops increasing, so a bad chain costs frames, never a fault.
//!
//! Without frame pointers, [`CallStacks::ReturnAddress`] records the allocator's return
//! address alone.
//!
//! # Address convention
//!
//! A frame is a *call site*, not a return address: [`call_site`] clears the Thumb bit of the
//! return address and subtracts one more, so the address lies inside the `bl`/`blx` instruction
//! that made the call (for `bl`, its second half-word). Host resolvers (the `tracemalloc` CLI's
//! `--elf`, `addr2line`) look such an address up as it is, without adjusting it again, and get
//! the line of the call rather than the line after it.

/// The RAM the stack lives in; the frame walk reads nothing outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StackBounds {
    /// Lowest address a frame record may start at.
    pub low: usize,
    /// One past the highest address a frame record may end at (the initial stack pointer,
    /// `_stack_start` in cortex-m-rt's linker script).
    pub high: usize,
}

impl StackBounds {
    /// Bounds from `low` (inclusive) to `high` (exclusive).
    pub const fn new(low: usize, high: usize) -> StackBounds {
        StackBounds { low, high }
    }

    /// Whether a two-word frame record at `fp` lies inside the bounds and is word aligned.
    #[inline]
    fn holds_record(&self, fp: usize) -> bool {
        fp >= self.low
            && fp.is_multiple_of(WORD)
            && fp.checked_add(2 * WORD).is_some_and(|end| end <= self.high)
    }
}

/// How the traced heap captures the call stack of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CallStacks {
    /// The allocator's return address alone (firmware built without frame pointers).
    ReturnAddress,
    /// The r7 frame chain inside these bounds (firmware built with
    /// `-C force-frame-pointers=yes`).
    FramePointers(StackBounds),
}

const WORD: usize = core::mem::size_of::<usize>();

/// The call site of a return address: Thumb bit cleared, minus one (see the module docs).
#[inline]
pub const fn call_site(return_address: usize) -> usize {
    (return_address & !1).wrapping_sub(1)
}

/// Whether `ra` can be a return address into Thumb code: odd, and not an `EXC_RETURN` value
/// (0xFFFF_FFxx on exception entry, where the chain crosses into an interrupted context).
#[inline]
fn is_code_return(ra: usize) -> bool {
    ra & 1 == 1 && (ra as u64) < 0xF000_0000
}

/// Walks the frame chain from the record at `fp`, writing call sites into `out` (most recent
/// first). Returns how many frames were written and the chain's whole depth (saturating at
/// `u16::MAX`), which the traceback keeps as `total_nframe`.
///
/// `read` loads one word; it is only called on addresses inside `bounds`.
pub fn walk(
    mut fp: usize,
    bounds: &StackBounds,
    read: impl Fn(usize) -> usize,
    out: &mut [usize],
) -> (usize, u16) {
    let mut kept = 0;
    let mut total: u16 = 0;
    while bounds.holds_record(fp) && total < u16::MAX {
        let next = read(fp);
        let ra = read(fp + WORD);
        if !is_code_return(ra) {
            break;
        }
        if let Some(slot) = out.get_mut(kept) {
            *slot = call_site(ra);
            kept += 1;
        }
        total += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    (kept, total)
}

/// The current frame pointer (r7). Only meaningful in a function built with frame pointers.
#[cfg(target_arch = "arm")]
#[inline(always)]
pub(crate) fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: copies r7 into a register; reads no memory and changes no state.
    unsafe {
        core::arch::asm!("mov {}, r7", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

/// The link register. Holds the return address only before the function makes a call.
#[cfg(target_arch = "arm")]
#[inline(always)]
pub(crate) fn link_register() -> usize {
    let lr: usize;
    // SAFETY: copies lr into a register; reads no memory and changes no state.
    unsafe {
        core::arch::asm!("mov {}, lr", out(reg) lr, options(nomem, nostack, preserves_flags))
    };
    lr
}

/// Off Cortex-M (host tests) there is no chain to walk: stacks are empty.
#[cfg(not(target_arch = "arm"))]
#[inline(always)]
pub(crate) fn frame_pointer() -> usize {
    0
}

/// Off Cortex-M (host tests) there is no chain to walk: stacks are empty.
#[cfg(not(target_arch = "arm"))]
#[inline(always)]
pub(crate) fn link_register() -> usize {
    0
}

/// Reads one word of the stack.
#[inline(always)]
pub(crate) fn read_stack_word(addr: usize) -> usize {
    // SAFETY: `walk` calls this only for aligned addresses inside the firmware's `StackBounds`,
    // which name RAM that is always mapped; a volatile read of RAM has no side effects.
    unsafe { core::ptr::read_volatile(addr as *const usize) }
}

/// Captures the call stack of the function whose frame pointer is `fp` and whose entry link
/// register was `lr`, as `CallStacks` says. Returns frames kept and total depth.
#[inline(always)]
pub(crate) fn capture(mode: &CallStacks, fp: usize, lr: usize, out: &mut [usize]) -> (usize, u16) {
    match mode {
        CallStacks::FramePointers(bounds) => walk(fp, bounds, read_stack_word, out),
        CallStacks::ReturnAddress => match out.first_mut() {
            Some(slot) if is_code_return(lr) => {
                *slot = call_site(lr);
                (1, 1)
            }
            _ => (0, 0),
        },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashMap;

    /// A fake stack: word address -> value.
    struct Memory(HashMap<usize, usize>);

    impl Memory {
        /// Frame records at `fps`, each pointing at the next, with return addresses `ras`.
        fn chain(fps: &[usize], ras: &[usize], last_next: usize) -> Memory {
            let mut m = HashMap::new();
            for (i, (&fp, &ra)) in fps.iter().zip(ras).enumerate() {
                m.insert(fp, fps.get(i + 1).copied().unwrap_or(last_next));
                m.insert(fp + WORD, ra);
            }
            Memory(m)
        }
        fn read(&self, addr: usize) -> usize {
            self.0.get(&addr).copied().unwrap_or(0)
        }
    }

    const RAM: StackBounds = StackBounds::new(0x2000_0000, 0x2001_0000);

    #[test]
    fn call_site_lands_inside_the_call_instruction() {
        // A `bl` at 0x1230..0x1234 returns to 0x1235 (Thumb bit set).
        assert_eq!(call_site(0x1235), 0x1233);
        assert!((0x1230..0x1234).contains(&call_site(0x1235)));
    }

    #[test]
    fn walk_follows_the_chain_until_it_leaves_ram() {
        let fps = [0x2000_ff00, 0x2000_ff20, 0x2000_ff40];
        let m = Memory::chain(&fps, &[0x101, 0x203, 0x305], 0x0);
        let mut out = [0; 8];
        let (kept, total) = walk(fps[0], &RAM, |a| m.read(a), &mut out);
        assert_eq!((kept, total), (3, 3));
        assert_eq!(&out[..3], &[0xff, 0x201, 0x303]);
    }

    #[test]
    fn walk_keeps_the_limit_but_counts_the_whole_depth() {
        let fps = [0x2000_f000, 0x2000_f010, 0x2000_f020, 0x2000_f030];
        let m = Memory::chain(&fps, &[0x11, 0x21, 0x31, 0x41], 0x1000_0000);
        let mut out = [0; 2];
        assert_eq!(walk(fps[0], &RAM, |a| m.read(a), &mut out), (2, 4));
        assert_eq!(out, [0x0f, 0x1f]);
    }

    #[test]
    fn walk_stops_when_the_chain_stops_increasing() {
        // The second record points back at the first: a loop, cut after two frames.
        let fps = [0x2000_f000, 0x2000_f010];
        let m = Memory::chain(&fps, &[0x11, 0x21], fps[0]);
        let mut out = [0; 8];
        assert_eq!(walk(fps[0], &RAM, |a| m.read(a), &mut out), (2, 2));
    }

    #[test]
    fn walk_stops_at_exception_frames_and_non_thumb_addresses() {
        let fps = [0x2000_f000, 0x2000_f010, 0x2000_f020];
        let m = Memory::chain(&fps, &[0x11, 0xFFFF_FFF9, 0x31], 0);
        let mut out = [0; 8];
        assert_eq!(walk(fps[0], &RAM, |a| m.read(a), &mut out), (1, 1));
        let m = Memory::chain(&fps, &[0x11, 0x20, 0x31], 0);
        assert_eq!(walk(fps[0], &RAM, |a| m.read(a), &mut out), (1, 1));
    }

    #[test]
    fn walk_never_reads_outside_the_bounds() {
        let mut out = [0; 4];
        let read = |a: usize| -> usize {
            assert!(RAM.low <= a && a + WORD <= RAM.high, "read at {a:#x}");
            (a + 0x101) | 1
        };
        for fp in [
            0,
            0x1fff_fffc,
            0x2000_fff8,
            0x2000_fffc,
            0x2001_0000,
            0x2000_0002,
            usize::MAX,
        ] {
            let _ = walk(fp, &RAM, read, &mut out);
        }
        // Records climbing to the top of RAM stop before reading past it.
        let climb = |a: usize| {
            if (a - RAM.low).is_multiple_of(2 * WORD) {
                a + 0x400
            } else {
                0x11
            }
        };
        let (_, total) = walk(RAM.low, &RAM, climb, &mut out);
        assert_eq!(total, 64);
    }

    #[test]
    fn return_address_mode_keeps_one_frame() {
        let mut out = [0; 4];
        assert_eq!(
            capture(&CallStacks::ReturnAddress, 0, 0x4321, &mut out),
            (1, 1)
        );
        assert_eq!(out[0], 0x431f);
        assert_eq!(capture(&CallStacks::ReturnAddress, 0, 0, &mut out), (0, 0));
        assert_eq!(
            capture(&CallStacks::ReturnAddress, 0, 0x4321, &mut []),
            (0, 0)
        );
    }
}
