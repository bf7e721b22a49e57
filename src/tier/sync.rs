//! The one door through which the tier reaches `std::sync` and `std::thread`.
//!
//! Every lock, condition variable, atomic and thread used by `crate::tier` comes from here,
//! so that a concurrency checker can be swapped in by changing this file only. With the cargo
//! feature `shuttle` the locks, condition variables, atomics and threads are shuttle's:
//! shuttle then schedules the tier's threads and explores their interleavings
//! (`shuttle_tests.rs`). Such a build must run tier code only inside `shuttle::check_*`; it
//! is for those tests alone.
//!
//! `Arc`/`Weak` are std's in both builds: they share ownership and synchronise nothing that
//! the tier's invariants depend on (shuttle has no `Arc` of its own). [`IdCounter`] is std's
//! too: it hands out process-unique ids from a `static` that outlives any one shuttle run,
//! and uniqueness needs no particular interleaving.
//!
//! Poisoning: the tier never calls foreign code (the caller's `FillSource`) while holding a
//! lock, and every critical section leaves its data consistent before any call that could
//! panic, so a poisoned lock is recovered with [`lock`] instead of cascading the panic.

pub use std::sync::atomic::AtomicU64 as IdCounter;
pub use std::sync::{Arc, PoisonError};

#[cfg(not(feature = "shuttle"))]
pub use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub use std::thread;

#[cfg(feature = "shuttle")]
pub use shuttle::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Condvar, Mutex, MutexGuard};
#[cfg(feature = "shuttle")]
pub use shuttle::thread;

/// Locks `m`, recovering the guard if a previous holder panicked (see module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, recovering the guard if a previous holder panicked.
pub fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(PoisonError::into_inner)
}
