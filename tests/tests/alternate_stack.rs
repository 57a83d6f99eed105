//! An allocation made off the thread's stack (here a signal handler on its alternate stack;
//! also a coroutine's or `stacker`'s stack) must not be walked by frame pointers up to the
//! thread's stack top: between the two stacks lies unmapped memory, and the interrupted code's
//! frame-pointer register (C built without frame pointers uses it for data) may point there.
//! The tracer unwinds such stacks instead (`adapter-std/src/capture.rs`, `walk`), and the
//! handler's block still gets a traceback that names the handler.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

/// The block the handler allocated and kept (0 until it ran).
static KEPT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    // A traced allocation in the handler: the tracer captures the stack from here.
    let block = std::hint::black_box(Box::new(42u64));
    KEPT.store(Box::into_raw(block) as usize, SeqCst);
}

// `raise_with_fp_data(fp, pid, tid, signal)`: sends the signal to the thread while the
// frame-pointer register holds `fp`, as in C built without frame pointers, which keeps data
// there. Unlike such C code, no frame-pointer chain leads through it; like it, its unwind
// information is exact (the frame is found from the stack pointer), so an unwinder passes it.
core::arch::global_asm!(
    ".globl raise_with_fp_data",
    ".type raise_with_fp_data, @function",
    "raise_with_fp_data:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_offset rbp, -16",
    "mov rbp, rdi",
    "mov rdi, rsi",
    "mov rsi, rdx",
    "mov rdx, rcx",
    "mov eax, 234", // SYS_tgkill
    "syscall",
    "pop rbp",
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbp",
    "ret",
    ".cfi_endproc",
    ".size raise_with_fp_data, . - raise_with_fp_data",
);

extern "C" {
    fn raise_with_fp_data(fp: usize, pid: libc::pid_t, tid: libc::pid_t, signal: libc::c_int);
}

/// Sends SIGUSR1 to this thread while the frame-pointer register holds `fp`.
fn raise_with_fp(fp: usize) {
    assert_eq!(libc::SYS_tgkill, 234);
    // SAFETY: `raise_with_fp_data` saves and restores `rbp`, clobbers only registers the C
    // calling convention lets a callee clobber (and `rcx`, `r11` by `syscall`), and the
    // handler runs on the alternate stack and returns.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        raise_with_fp_data(fp, libc::getpid(), tid, libc::SIGUSR1);
    }
}

/// This thread's stack as `(low, high)`.
fn thread_stack() -> (usize, usize) {
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before use and destroyed once;
    // `pthread_attr_getstack` writes the two out-parameters.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut addr = std::ptr::null_mut();
        let mut size = 0;
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        (addr as usize, addr as usize + size)
    }
}

/// Runs `f` in a child process; "exit 0" when the handler's block has a traceback naming
/// `on_usr1`, else how the child ended (a crash: "killed by signal N").
fn in_child(f: impl FnOnce()) -> String {
    // SAFETY: the child runs `f` and the checks on this one thread, then `_exit`s without
    // running the parent's destructors; the parent only waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            f();
            let kept = KEPT.load(SeqCst) as *const u64;
            let named = !kept.is_null()
                && tracemalloc::object_traceback(kept).is_some_and(|t| {
                    t.frames
                        .iter()
                        .any(|f| f.function.as_deref().is_some_and(|n| n.contains("on_usr1")))
                });
            libc::_exit(if named { 0 } else { 3 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit {}", libc::WEXITSTATUS(status))
        }
    }
}

#[test]
fn a_traced_allocation_on_an_alternate_signal_stack_is_unwound_not_walked() {
    tracemalloc::start(16).unwrap();
    drop(std::hint::black_box(Box::new(1u64))); // the walk's stack bounds are read
    let (low, high) = thread_stack();
    // 4 MiB well below the thread's stack: the lowest MiB is the signal stack, the top 2 MiB
    // are given back (unmapped) and lie between the signal stack and the thread's stack.
    // SAFETY: a fresh anonymous mapping at a hint (not MAP_FIXED: nothing is replaced); only
    // its own upper half is unmapped.
    let base = unsafe {
        let hint = (low - (64 << 20)) & !0xFFFF;
        let p = libc::mmap(
            hint as *mut libc::c_void,
            4 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        assert!(
            base + (4 << 20) <= low,
            "the mapping lies below the thread's stack"
        );
        assert_eq!(
            libc::munmap((base + (2 << 20)) as *mut libc::c_void, 2 << 20),
            0
        );
        base
    };
    let unmapped = base + (3 << 20);
    assert!(unmapped < high);
    // SAFETY: `sa` is fully initialised (zeroed, then the handler, flags and an empty mask).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let set_alt_stack = move || {
        let ss = libc::stack_t {
            ss_sp: base as *mut libc::c_void,
            ss_flags: 0,
            ss_size: 1 << 20,
        };
        // SAFETY: the first MiB of the mapping stays mapped for the child's life.
        assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
    };
    // The interrupted code's frame pointer is a real one.
    let control = in_child(|| {
        set_alt_stack();
        // SAFETY: raising a signal whose handler is installed above.
        unsafe { libc::raise(libc::SIGUSR1) };
    });
    // It holds data: an aligned address between the signal stack and the thread's stack,
    // unmapped, that a walk bounded by the thread's stack would follow.
    let data_in_fp = in_child(|| {
        set_alt_stack();
        raise_with_fp(unmapped);
    });
    tracemalloc::stop();
    assert_eq!(control, "exit 0", "a signal stack, a real frame pointer");
    assert_eq!(
        data_in_fp, "exit 0",
        "a signal stack, data in the frame-pointer register"
    );
}
