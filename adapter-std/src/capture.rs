//! Call-stack capture from inside the allocator.
//!
//! The fast path walks the frame-pointer chain (about 1 ns a frame): with
//! `-C force-frame-pointers=yes` every Rust frame, std's included, starts with the caller's frame
//! pointer and the return address. The walk stays within the current thread's stack, whose
//! bounds are read once per thread, so a foreign frame that reuses the frame-pointer register as
//! data ends the walk instead of faulting; an allocation made off that stack (an alternate
//! signal stack, a coroutine's) is unwound instead. Where no walker exists (other architectures or
//! systems) or when asked, the `backtrace` crate's unwinder does the job, about 100x slower.
//!
//! Frames are stored as return address minus one: an address inside the call instruction, so that
//! symbolization names the calling line even when the call is the last instruction of a line.

use core::mem::MaybeUninit;

use tracemalloc_core::traceback::{fold_frame, HASH_SEED};

use crate::plumbing;

/// How call stacks are captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Capture {
    /// Frame pointers where this platform has a walker, the unwinder elsewhere.
    #[default]
    Auto,
    /// Walk the frame-pointer chain. Needs `-C force-frame-pointers=yes`: without it the
    /// register holds data, and the walk would read wherever that points below the top of the
    /// stack (`Auto` checks the build once and uses the unwinder instead).
    FramePointers,
    /// DWARF unwinding through the `backtrace` crate: no build flag needed, ~110 ns a frame.
    Unwinder,
}

impl Capture {
    /// Whether this platform has a frame-pointer walker.
    pub const fn frame_pointers_supported() -> bool {
        cfg!(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            any(target_os = "linux", target_os = "android")
        ))
    }

    /// The method `Auto` stands for here: frame pointers where a walker exists and this build
    /// keeps the chain (checked once against the unwinder), the unwinder otherwise.
    pub(crate) fn resolved(self) -> Capture {
        match self {
            Capture::Auto if Capture::frame_pointers_supported() && frame_pointers_work() => {
                Capture::FramePointers
            }
            Capture::Auto => Capture::Unwinder,
            other => other,
        }
    }
}

/// Whether the frame-pointer walk sees the same callers as the unwinder: false when this code
/// was built without `-C force-frame-pointers=yes`, where the register holds data and the walk
/// would report garbage. Checked once; the answer cannot change while the program runs.
fn frame_pointers_work() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
    static KNOWN: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
    match KNOWN.load(Relaxed) {
        0 => {
            let works = probe_outer();
            KNOWN.store(if works { 2 } else { 1 }, Relaxed);
            works
        }
        known => known == 2,
    }
}

#[inline(never)]
fn probe_outer() -> bool {
    core::hint::black_box(probe_middle())
}

#[inline(never)]
fn probe_middle() -> bool {
    core::hint::black_box(probe_leaf())
}

/// Walks both ways from here. The frame pointers' first caller must be a return address inside
/// `probe_middle` (without frame pointers the register still holds some outer frame's, whose
/// callers the unwinder sees as well), and the first three callers must be the unwinder's too.
#[inline(never)]
fn probe_leaf() -> bool {
    if !Capture::frame_pointers_supported() {
        return false;
    }
    let mut walked = [MaybeUninit::new(0usize); 8];
    let n = capture(Capture::FramePointers, &mut walked, 8).n;
    let mut unwound = [MaybeUninit::new(0usize); 32];
    let m = capture(Capture::Unwinder, &mut unwound, 32).n;
    // SAFETY: both buffers were initialised before the captures.
    let (walked, unwound) = unsafe {
        (
            core::slice::from_raw_parts(walked.as_ptr().cast::<usize>(), n),
            core::slice::from_raw_parts(unwound.as_ptr().cast::<usize>(), m),
        )
    };
    let middle = probe_middle as fn() -> bool as usize;
    n >= 3
        && walked[0].wrapping_sub(middle) < 256
        && walked[..3].iter().all(|f| unwound.contains(f))
}

/// What a capture wrote.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Captured {
    /// Frames written to the start of the buffer.
    pub(crate) n: usize,
    /// Every frame the walk saw (saturating at `u16::MAX`), as CPython's `total_nframe`. A
    /// `u32`, not a `u16`: the caller reads this struct back from the stack, and a 2-byte store
    /// read by a wider load is not forwarded (perf put 14 % of the allocation path's samples on
    /// that wait).
    pub(crate) total: u32,
    /// The written frames folded with [`fold_frame`] from [`HASH_SEED`], in order.
    pub(crate) hash: u64,
}

/// A captured stack, as the tracer records it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stack<'a> {
    /// Frames, most recent first (return addresses minus one).
    pub(crate) frames: &'a [usize],
    /// Every frame the walk saw, as CPython's `total_nframe`.
    pub(crate) total: u16,
    /// [`Captured::hash`] of `frames`.
    pub(crate) hash: u64,
}

/// Fills `out` with frames of the caller's stack, most recent first, and hashes them: up to the
/// `nframe`-th frame that is not plumbing ([`crate::plumbing`]), for whose plumbing `out` has
/// room beyond `nframe`; without a plumbing map, as many as `out` holds. `out` may be
/// uninitialised: zeroing a 96-frame buffer on every allocation would cost more than walking
/// the frames.
#[inline(always)]
pub(crate) fn capture(method: Capture, out: &mut [MaybeUninit<usize>], nframe: usize) -> Captured {
    let mut captured = match method {
        #[cfg(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            any(target_os = "linux", target_os = "android")
        ))]
        Capture::FramePointers | Capture::Auto => frame_pointers::walk(out),
        _ => unwind(out),
    };
    // The walk fills `out` without asking which frames are plumbing, and only a stack longer
    // than the limit is cut to fit it afterwards: most stacks are shorter, and pay one compare.
    if captured.n > nframe {
        if let Some(map) = plumbing::map() {
            // SAFETY: the walk initialised the first `n` elements; `MaybeUninit<usize>` has the
            // layout of `usize`.
            let frames =
                unsafe { core::slice::from_raw_parts(out.as_ptr().cast::<usize>(), captured.n) };
            let (kept, hash) = map.frames_to_keep(frames, nframe, out.len().saturating_sub(nframe));
            if kept < captured.n {
                captured.n = kept;
                captured.hash = hash;
            }
        }
    }
    captured
}

/// A count of frames as `total_nframe` holds it: at most `u16::MAX`.
#[inline(always)]
fn saturate(frames: usize) -> u32 {
    frames.min(u16::MAX as usize) as u32
}

fn unwind(out: &mut [MaybeUninit<usize>]) -> Captured {
    let mut seen = 0usize;
    let mut written = 0usize;
    let mut hash = HASH_SEED;
    // The unwinder's own frames (the `backtrace` crate's and `_Unwind_Backtrace`, called from
    // here) come first, and lie below this function's frame: their stack pointer (the caller's
    // at the call with libgcc's `_Unwind_GetCFA`, the frame's own with LLVM's libunwind) is at
    // or below this local's address. Skipped, they neither use up the limit nor show in
    // snapshots; the skipping ends at the first frame kept, so that a frame after a switch of
    // stacks (a signal stack, a coroutine) is not dropped. (A backend without stack pointers
    // reports 0 and keeps them.)
    let marker = 0u8;
    let here = core::hint::black_box(&marker) as *const u8 as usize;
    let mut skipping = true;
    // SAFETY: `trace_unsynchronized` requires that no other thread unwinds through it at the
    // same time with the same global state; the unwinder (libunwind's `_Unwind_Backtrace`) is
    // thread-safe on the platforms std supports, and our callback neither panics nor unwinds.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let sp = frame.sp() as usize;
            if skipping && sp != 0 && sp <= here {
                return true;
            }
            skipping = false;
            // The end of the stack, as libgcc reports it past the thread's entry (the frame-
            // pointer walk ends at a zero return address too).
            if frame.ip().is_null() {
                return false;
            }
            if written < out.len() {
                let ip = frame.ip() as usize - 1;
                out[written].write(ip);
                hash = fold_frame(hash, ip);
                written += 1;
            }
            seen += 1;
            seen < u16::MAX as usize
        });
    }
    Captured {
        n: written,
        total: saturate(seen),
        hash,
    }
}

#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    any(target_os = "linux", target_os = "android")
))]
mod frame_pointers {
    use core::cell::Cell;
    use core::mem::MaybeUninit;

    use super::{fold_frame, Captured, HASH_SEED};

    thread_local! {
        /// This thread's stack as `(low, high)`; `(0, 0)` until read, `(1, 0)` when unknown.
        static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
        /// The megabyte of address space (address >> 20) a stack pointer was last found in
        /// outside this thread's stack, its bounds read again ([`bounds_again`]).
        static OFF_STACK: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// The current stack pointer: no frame record of this thread's lies below it.
    #[inline(always)]
    fn stack_pointer() -> usize {
        let sp: usize;
        // SAFETY: reading the stack-pointer register has no side effect.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        sp
    }

    /// The current frame pointer.
    #[inline(always)]
    fn frame_pointer() -> usize {
        let fp: usize;
        // SAFETY: reading the frame-pointer register has no side effect.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        fp
    }

    /// The thread's stack bounds read again for a stack pointer below those read before, if
    /// they hold it now: a main thread's stack grows on demand, musl reports only the part
    /// mapped so far, and glibc's bottom follows the stack size limit, which the program may
    /// raise. Once per megabyte of address space that a stack pointer outside them lies in, so
    /// that allocating on an alternate stack or a coroutine's costs one read, not one each.
    #[cold]
    fn bounds_again(sp: usize, high: usize) -> Option<(usize, usize)> {
        let region = sp >> 20;
        if sp >= high || OFF_STACK.try_with(Cell::get) == Ok(region) {
            return None;
        }
        let (bottom, high) = read_stack_bounds();
        if bottom <= sp && sp < high {
            return Some((bottom, high));
        }
        let _ = OFF_STACK.try_with(|off| off.set(region));
        None
    }

    /// Reads the bounds of the current thread's stack once and caches them.
    #[cold]
    fn read_stack_bounds() -> (usize, usize) {
        // SAFETY: `attr` is initialised by `pthread_getattr_np` before use and destroyed once;
        // `pthread_attr_getstack` writes the two out-parameters. glibc may call `malloc` here,
        // which is libc's heap, not the Rust global allocator, so nothing re-enters the tracer.
        let bounds = unsafe {
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
                (1, 0)
            } else {
                let mut addr: *mut libc::c_void = core::ptr::null_mut();
                let mut size: libc::size_t = 0;
                let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
                libc::pthread_attr_destroy(&mut attr);
                if ok {
                    (addr as usize, addr as usize + size)
                } else {
                    (1, 0)
                }
            }
        };
        let _ = STACK.try_with(|s| s.set(bounds));
        bounds
    }

    /// The highest address at which a whole frame record `[caller's fp, return address]` lies
    /// below `high`, the top of the stack. `high - 16`, never `fp + 16 > high`: a foreign
    /// frame's register may hold anything, and an address near the top of the address space
    /// would overflow.
    #[inline(always)]
    pub(super) fn record_limit(high: usize) -> usize {
        high.saturating_sub(2 * core::mem::size_of::<usize>())
    }

    /// Whether the walk may read a frame record at `next`, the frame pointer found in the record
    /// at `fp`: a valid chain strictly increases (which also rules out 0), stays within the
    /// stack and is aligned. A foreign frame's register may hold data; a misaligned value ends
    /// the walk instead of reading junk as a record.
    #[inline(always)]
    pub(super) fn follows(next: usize, fp: usize, limit: usize) -> bool {
        // One compare for the limit and the alignment: rotated, an aligned address is itself
        // divided by 8, a misaligned one has a top bit set and exceeds any limit divided by 8.
        const SHIFT: u32 = core::mem::align_of::<usize>().trailing_zeros();
        next > fp && next.rotate_right(SHIFT) <= limit >> SHIFT
    }

    /// The frame record at `fp`: the caller's frame pointer and the return address.
    ///
    /// # Safety
    /// `fp` is aligned and lies between the current frame and `record_limit` of this thread's
    /// stack, which is mapped.
    #[inline(always)]
    unsafe fn read_record(fp: usize) -> (usize, usize) {
        let record = fp as *const usize;
        // SAFETY: by the caller's guarantee both words lie in the mapped stack, aligned.
        unsafe { (*record, *record.add(1)) }
    }

    /// Walks this thread's frame-pointer chain from our own frame.
    #[inline(always)]
    pub(super) fn walk(out: &mut [MaybeUninit<usize>]) -> Captured {
        let (bottom, high) = match STACK.try_with(Cell::get) {
            Ok((0, 0)) | Err(_) => read_stack_bounds(),
            Ok(bounds) => bounds,
        };
        let sp = stack_pointer();
        // Off the thread's stack (a signal handler on its alternate stack, a coroutine's or
        // `stacker`'s stack), the memory between the stack pointer and the thread's top holds
        // unmapped gaps, and the interrupted code's frame-pointer register may hold data that
        // points into them: only the unwinder, which reads the unwind tables, is safe there.
        // Unknown bounds (`high == 0`) take it too.
        let high = if sp < bottom || sp >= high {
            match bounds_again(sp, high) {
                Some((_, high)) => high,
                None => return super::unwind(out),
            }
        } else {
            high
        };
        // The first record must lie between the stack pointer and the top as well: `Auto`
        // walks once to learn whether this build keeps frame pointers, and where it does not,
        // the frame-pointer register holds any value.
        let low = sp.wrapping_sub(1);
        // SAFETY: the stack pointer lies on this thread's stack (checked above), so everything
        // from it to the stack's top is mapped. `walk_chain` reads only records that passed
        // `follows`: the first above `low` (at or above the stack pointer), each next one above
        // the one before, all aligned and within `record_limit` of the stack's top.
        walk_chain(frame_pointer(), low, record_limit(high), out, |fp| unsafe {
            read_record(fp)
        })
    }

    /// The walk itself, over records read by `read` (the stack's memory, or a test's): from the
    /// record at `fp` while each next one [`follows`], filling `out` and then counting. The
    /// loop is kept to the loads, the stores and one test of the next record's place
    /// ([`follows`]): 20 instructions a frame on x86-64, where testing each frame pointer before
    /// reading it and again after took 21 (a 16-frame walk in a microbenchmark: 17.4 ns before,
    /// 15.2 ns now).
    #[inline(always)]
    pub(super) fn walk_chain(
        mut fp: usize,
        low: usize,
        limit: usize,
        out: &mut [MaybeUninit<usize>],
        read: impl Fn(usize) -> (usize, usize),
    ) -> Captured {
        let mut written = 0usize;
        let mut hash = HASH_SEED;
        if follows(fp, low, limit) {
            loop {
                let (next, ret) = read(fp);
                if ret == 0 {
                    break;
                }
                if written == out.len() {
                    // Only counting from here (CPython's total_nframe): a leaner loop.
                    return Captured {
                        n: written,
                        total: count_from(fp, next, limit, written, read),
                        hash,
                    };
                }
                out[written].write(ret - 1);
                hash = fold_frame(hash, ret - 1);
                written += 1;
                if !follows(next, fp, limit) {
                    break;
                }
                fp = next;
            }
        }
        Captured {
            n: written,
            total: super::saturate(written),
            hash,
        }
    }

    /// `counted` plus the frames from the record at `fp` (whose caller's frame pointer is `next`)
    /// to the end of the chain, saturating at `u16::MAX`.
    #[inline(always)]
    fn count_from(
        mut fp: usize,
        mut next: usize,
        limit: usize,
        counted: usize,
        read: impl Fn(usize) -> (usize, usize),
    ) -> u32 {
        let mut total = counted + 1;
        while follows(next, fp, limit) && total < u16::MAX as usize {
            fp = next;
            let (caller, ret) = read(fp);
            if ret == 0 {
                break;
            }
            total += 1;
            next = caller;
        }
        super::saturate(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn leaf(method: Capture) -> (Vec<usize>, u32) {
        let mut buf = [MaybeUninit::new(0usize); 64];
        let Captured { n, total, .. } = capture(method, &mut buf, 64);
        // SAFETY: `capture` wrote the first `n` elements (they were initialised anyway).
        (
            buf[..n]
                .iter()
                .map(|f| unsafe { f.assume_init() })
                .collect(),
            total,
        )
    }

    #[inline(never)]
    fn middle(method: Capture) -> (Vec<usize>, u32) {
        let r = leaf(method);
        std::hint::black_box(r)
    }

    #[test]
    fn frame_pointer_walk_sees_the_callers() {
        if !Capture::frame_pointers_supported() {
            return;
        }
        let (frames, total) = middle(Capture::FramePointers);
        assert!(frames.len() >= 3, "{frames:x?}");
        assert!(total as usize >= frames.len());
        // The unwinder sees the same return addresses for the frames both reach.
        let (unwound, _) = middle(Capture::Unwinder);
        let common = frames.iter().filter(|f| unwound.contains(f)).count();
        assert!(common >= 2, "fp {frames:x?} vs unwind {unwound:x?}");
    }

    #[test]
    fn the_unwinder_ends_at_the_last_frame_with_a_return_address() {
        // The unwinder reports the end of the stack as a frame at address 0 (libgcc, after
        // `_start`), which is no frame of the program: a traceback ending there would show a
        // bogus `0x0` as its oldest frame, the one statistics by traceback are labelled with.
        let (frames, total) = middle(Capture::Unwinder);
        assert!(frames.len() >= 3 && frames.len() < 64, "{frames:x?}");
        assert!(!frames.contains(&0), "{frames:x?}");
        assert_eq!(total as usize, frames.len());
    }

    #[test]
    fn this_build_keeps_frame_pointers_and_auto_uses_them() {
        // The workspace builds with -C force-frame-pointers=yes (.cargo/config.toml).
        if Capture::frame_pointers_supported() {
            assert!(frame_pointers_work());
            assert_eq!(Capture::Auto.resolved(), Capture::FramePointers);
        }
    }

    #[test]
    fn the_hash_folds_exactly_the_frames_written() {
        crate::plumbing::build_and_wait();
        let mut methods = vec![Capture::Unwinder];
        if Capture::frame_pointers_supported() {
            methods.push(Capture::FramePointers);
        }
        for method in methods {
            // Whole buffers, and a limit of 2 in a buffer of 64 (cut after the walk).
            for (len, nframe) in [(2, 2), (64, 64), (64, 2)] {
                let mut buf = vec![MaybeUninit::new(0usize); len];
                let captured = capture(method, &mut buf, nframe);
                // SAFETY: the buffer was initialised before the capture.
                let frames: Vec<usize> = buf[..captured.n]
                    .iter()
                    .map(|f| unsafe { f.assume_init() })
                    .collect();
                let folded = tracemalloc_core::traceback::fold_stack(&frames);
                assert_eq!(captured.hash, folded, "{method:?}, {len} frames");
                assert_ne!(captured.hash, HASH_SEED);
            }
        }
    }

    #[test]
    #[cfg(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        any(target_os = "linux", target_os = "android")
    ))]
    fn a_frame_pointer_near_the_top_of_the_address_space_ends_the_walk() {
        let limit = frame_pointers::record_limit(usize::MAX - 4096);
        for fp in [usize::MAX - 7, usize::MAX - 15, usize::MAX & !7] {
            assert!(!frame_pointers::follows(fp, 4096, limit));
        }
        let limit = frame_pointers::record_limit(16);
        assert!(
            !frame_pointers::follows(8, 0, limit),
            "a record must fit below the top"
        );
        assert!(frame_pointers::follows(
            8,
            0,
            frame_pointers::record_limit(24)
        ));
        assert!(
            !frame_pointers::follows(64, 64, usize::MAX),
            "the chain must increase"
        );
        assert!(
            !frame_pointers::follows(68, 64, 4096),
            "records are aligned"
        );
    }

    /// The frame-pointer walk over a synthetic stack: `records` frame records of 16 bytes from
    /// `BASE` upwards, record `i` holding `[next, ret]` with `next` the record above (0 for the
    /// last) and `ret` `RET + i`, in memory that extends `SLACK` bytes past the last record.
    #[cfg(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        any(target_os = "linux", target_os = "android")
    ))]
    mod synthetic {
        use super::*;

        const BASE: usize = 0x10_0000;
        const RET: usize = 0x40_0000;
        const SLACK: usize = 64;

        struct Stack {
            words: Vec<usize>,
            /// The record limit: the last address at which the walk may read a record.
            limit: usize,
        }

        impl Stack {
            fn new(records: usize) -> Stack {
                let mut words = vec![0; 2 * records + SLACK / 8];
                for i in 0..records {
                    words[2 * i] = if i + 1 < records { record(i + 1) } else { 0 };
                    words[2 * i + 1] = RET + i;
                }
                let limit = BASE + 8 * words.len() - 16;
                Stack { words, limit }
            }

            fn set(&mut self, record_index: usize, next: usize, ret: usize) {
                self.words[2 * record_index] = next;
                self.words[2 * record_index + 1] = ret;
            }

            /// Walks from `start` with a buffer of `len` frames: the frames written and the
            /// capture.
            fn walk_from(&self, start: usize, len: usize) -> (Vec<usize>, Captured) {
                let mut out = vec![MaybeUninit::new(0usize); len];
                let read = |addr: usize| {
                    assert!(
                        addr >= BASE && addr.is_multiple_of(8) && addr <= self.limit,
                        "read at {addr:#x}"
                    );
                    let i = (addr - BASE) / 8;
                    (self.words[i], self.words[i + 1])
                };
                let low = BASE - 1; // the stack pointer's place: records from BASE on
                let captured = frame_pointers::walk_chain(start, low, self.limit, &mut out, read);
                // SAFETY: the buffer was initialised before the walk.
                let frames = out[..captured.n]
                    .iter()
                    .map(|f| unsafe { f.assume_init() })
                    .collect();
                (frames, captured)
            }

            fn walk(&self, len: usize) -> (Vec<usize>, Captured) {
                self.walk_from(BASE, len)
            }
        }

        fn record(i: usize) -> usize {
            BASE + 16 * i
        }

        /// Return addresses minus one of records `0..n`, as the walk writes them.
        fn frames(n: usize) -> Vec<usize> {
            (0..n).map(|i| RET + i - 1).collect()
        }

        fn check(walked: (Vec<usize>, Captured), n: usize, total: u32) {
            let (written, captured) = walked;
            assert_eq!((captured.n, captured.total), (n, total));
            assert_eq!(written, frames(n));
            assert_eq!(
                captured.hash,
                tracemalloc_core::traceback::fold_stack(&written)
            );
        }

        #[test]
        fn a_whole_chain_is_written_and_counted() {
            let stack = Stack::new(5);
            check(stack.walk(8), 5, 5);
            check(stack.walk(5), 5, 5); // exactly full
        }

        #[test]
        fn frames_past_the_buffer_are_counted_only() {
            let stack = Stack::new(5);
            check(stack.walk(2), 2, 5);
            check(stack.walk(1), 1, 5);
            check(stack.walk(0), 0, 5);
        }

        #[test]
        fn a_zero_return_address_ends_the_chain_where_it_is() {
            let mut stack = Stack::new(6);
            stack.set(3, record(4), 0);
            check(stack.walk(8), 3, 3); // while writing
            check(stack.walk(1), 1, 3); // while counting
        }

        #[test]
        fn a_link_that_is_misaligned_backwards_or_beyond_the_limit_ends_the_chain() {
            for (bad_next, what) in [
                (record(3) + 4, "misaligned"),
                (record(1), "backwards"),
                (record(2), "to itself"),
                (0, "zero"),
            ] {
                let mut stack = Stack::new(6);
                stack.set(2, bad_next, RET + 2);
                let (written, captured) = stack.walk(8);
                assert_eq!((captured.n, captured.total), (3, 3), "{what}: {written:x?}");
                check(stack.walk(1), 1, 3);
            }
            let mut stack = Stack::new(6);
            stack.limit = record(3) - 8; // records 3 and up lie past the top of the stack
            check(stack.walk(8), 3, 3);
            check(stack.walk(1), 1, 3);
        }

        #[test]
        fn a_start_that_is_no_record_walks_nothing() {
            let stack = Stack::new(3);
            // Below the stack pointer (a frame-pointer register holding data, in a build
            // without frame pointers that `Auto` probes), misaligned, past the top.
            for start in [0, BASE - 16, BASE + 4, stack.limit + 8] {
                check(stack.walk_from(start, 8), 0, 0);
            }
            let (written, captured) = stack.walk_from(record(1), 8);
            assert_eq!(written, frames(3)[1..]);
            assert_eq!(captured.total, 2);
        }

        #[test]
        fn the_count_saturates_at_u16_max() {
            let stack = Stack::new(70_000);
            check(stack.walk(4), 4, u32::from(u16::MAX));
            let stack = Stack::new(usize::from(u16::MAX) + 1);
            check(stack.walk(0), 0, u32::from(u16::MAX));
        }
    }

    #[test]
    fn capture_respects_the_buffer_and_counts_the_total() {
        let mut buf = [MaybeUninit::new(0usize); 2];
        let Captured { n, total, .. } = capture(Capture::Auto.resolved(), &mut buf, 2);
        assert_eq!(n, 2);
        assert!(total >= 2);
    }
}
