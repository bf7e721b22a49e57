//! The one door through which the tier reaches `std::sync`.
//!
//! Every lock, condition variable, `Arc` and atomic used by `crate::tier` is imported from
//! here, so a concurrency checker (shuttle, loom) can be swapped in by changing this file
//! only (mountpoint-s3 `sync.rs`, quick-cache `shim.rs`).
//!
//! Poisoning: the tier never calls foreign code (the caller's `FillSource`) while holding a
//! lock, and every critical section leaves its data consistent before any call that could
//! panic, so a poisoned lock is recovered with [`lock`] instead of cascading the panic.

pub use std::sync::atomic::{AtomicU64, Ordering};
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// Locks `m`, recovering the guard if a previous holder panicked (see module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, recovering the guard if a previous holder panicked.
pub fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
