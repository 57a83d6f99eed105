//! Call-stack capture from inside the allocator.
//!
//! The fast path walks the frame-pointer chain (about 1 ns a frame): with
//! `-C force-frame-pointers=yes` every Rust frame, std's included, starts with the caller's frame
//! pointer and the return address. The walk stays within the current thread's stack, whose
//! bounds are read once per thread, so a foreign frame that reuses the frame-pointer register as
//! data ends the walk instead of faulting. Where no walker exists (other architectures or
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
    /// Walk the frame-pointer chain. Needs `-C force-frame-pointers=yes`.
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
            if written < out.len() {
                let ip = (frame.ip() as usize).saturating_sub(1);
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
    /// at `fp`: a valid chain strictly increases (which also rules out 0) and stays within the
    /// stack. Alignment is not required: records are read unaligned, so a foreign frame's odd
    /// register value is read as data rather than faulting, and the walk ends at the next test.
    #[inline(always)]
    pub(super) fn follows(next: usize, fp: usize, limit: usize) -> bool {
        next > fp && next <= limit
    }

    /// The frame record at `fp`: the caller's frame pointer and the return address.
    ///
    /// # Safety
    /// `fp` lies between the current frame and `record_limit` of this thread's stack: the walk
    /// starts from our own frame pointer and only moves upwards ([`follows`]), and the stack
    /// above the current frame is mapped.
    #[inline(always)]
    unsafe fn read_record(fp: usize) -> (usize, usize) {
        let record = fp as *const usize;
        // SAFETY: by the caller's guarantee both words lie in the mapped stack; unaligned reads
        // are valid for any address.
        unsafe { (record.read_unaligned(), record.add(1).read_unaligned()) }
    }

    /// Walks the frame-pointer chain. The loop is kept to the loads, the stores and one test of
    /// the next record's place (no alignment test, no re-test of a frame pointer already
    /// tested): a 16-frame walk took 17.4 ns in that form against 14.6 ns (a microbenchmark).
    #[inline(always)]
    pub(super) fn walk(out: &mut [MaybeUninit<usize>]) -> Captured {
        let (_, high) = match STACK.try_with(Cell::get) {
            Ok((0, 0)) | Err(_) => read_stack_bounds(),
            Ok(bounds) => bounds,
        };
        if high == 0 {
            return super::unwind(out); // stack bounds unknown: walking would be unsafe
        }
        let limit = record_limit(high);
        let mut fp = frame_pointer();
        let mut written = 0usize;
        let mut hash = HASH_SEED;
        if follows(fp, 0, limit) {
            loop {
                // SAFETY: `fp` is our own frame pointer or passed `follows` from a record below.
                let (next, ret) = unsafe { read_record(fp) };
                if ret == 0 {
                    break;
                }
                if written == out.len() {
                    // Only counting from here (CPython's total_nframe): a leaner loop.
                    return Captured {
                        n: written,
                        total: count_from(fp, next, limit, written),
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
    fn count_from(mut fp: usize, mut next: usize, limit: usize, counted: usize) -> u32 {
        let mut total = counted + 1;
        while follows(next, fp, limit) && total < u16::MAX as usize {
            fp = next;
            // SAFETY: `fp` passed `follows` from the record below it.
            let (caller, ret) = unsafe { read_record(fp) };
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
    }

    #[test]
    fn capture_respects_the_buffer_and_counts_the_total() {
        let mut buf = [MaybeUninit::new(0usize); 2];
        let Captured { n, total, .. } = capture(Capture::Auto.resolved(), &mut buf, 2);
        assert_eq!(n, 2);
        assert!(total >= 2);
    }
}
