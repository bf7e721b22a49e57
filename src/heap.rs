//! Giving memory back: hash maps that shrink once mostly empty, and the allocator's free
//! pages returned to the system. The daemon's tables grow with what the kernel holds (a
//! million inodes in an epoch) and must fall back near idle once it forgets them.

use std::collections::{HashMap, HashSet};

/// Shrinks `map` to twice its length when it uses under a quarter of its capacity (a hash
/// map never shrinks by itself: after the kernel forgot a million inodes, their slots would
/// stay). Returns whether it shrank.
pub fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> bool {
    if !is_sparse(map.len(), map.capacity()) {
        return false;
    }
    map.shrink_to(2 * map.len());
    true
}

/// [`shrink_if_sparse`] for a set.
pub fn shrink_set_if_sparse<T: std::hash::Hash + Eq>(set: &mut HashSet<T>) -> bool {
    if !is_sparse(set.len(), set.capacity()) {
        return false;
    }
    set.shrink_to(2 * set.len());
    true
}

/// Whether a table of `capacity` slots holding `len` entries should give memory back: under a
/// quarter used, and more than a few thousand slots spare.
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > 4 * len + 4096
}

/// Large allocations (128 KiB and up: the tables of a million inodes) get pages of their own
/// from `mmap`, given back whole when freed. glibc otherwise raises that threshold each time
/// such a block is freed (up to 32 MiB) and then serves the next tables from a thread's
/// arena, whose free top `malloc_trim` never returns: a million-inode epoch left 30 MiB
/// resident after the kernel forgot every inode. Setting the threshold once fixes it (and
/// the trim threshold) at glibc's default. Call before the daemon's threads start.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes no pointer and only sets an allocator parameter, under the
    // allocator's own lock; any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns the heap's free pages to the system: glibc keeps what many small frees (a
/// forgotten table) gave back otherwise.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer; it only walks the allocator's own free lists,
    // under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
