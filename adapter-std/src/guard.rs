//! The per-thread re-entrancy guard.
//!
//! While a thread is inside the tracer (capturing a stack, symbolizing, copying a snapshot), any
//! allocation it makes (the unwinder's, the tracer's own, a TLS destructor's) must pass through
//! untraced: tracing it would recurse into the tracer or wait on a lock the thread already holds.

use core::cell::Cell;

thread_local! {
    // A const-initialised `Cell<bool>` has no destructor, so it stays usable while the thread's
    // other thread-locals are torn down, and reading it never allocates.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside the tracer until dropped.
pub(crate) struct Guard(());

impl Guard {
    /// Enters the tracer, or returns `None` when the thread is inside already (or its
    /// thread-locals are gone), in which case the caller must not trace.
    #[inline(always)]
    pub(crate) fn enter() -> Option<Guard> {
        match INSIDE.try_with(|inside| inside.replace(true)) {
            Ok(false) => Some(Guard(())),
            _ => None,
        }
    }

    /// Enters the tracer until [`Guard::leave_held`] on this thread (fork handlers enter in one
    /// callback and leave in another); false when the thread was inside already.
    #[cfg(unix)]
    pub(crate) fn enter_held() -> bool {
        Guard::enter().map(core::mem::forget).is_some()
    }

    /// Leaves what [`Guard::enter_held`] entered on this thread.
    #[cfg(unix)]
    pub(crate) fn leave_held() {
        drop(Guard(()));
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_entry_is_refused_until_the_outer_guard_drops() {
        let outer = Guard::enter().expect("first entry");
        assert!(Guard::enter().is_none());
        drop(outer);
        assert!(Guard::enter().is_some());
    }
}
