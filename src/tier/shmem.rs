//! Shared device memory: per-file copies in a private tmpfs that the kernel can serve.
//!
//! The arena (`arena.rs`) is anonymous memory: only the daemon can read it. A file whose
//! device-view opens the kernel serves itself (FUSE passthrough, `export.rs`) needs its device
//! copy as a *file* at the file's own offsets. [`SharedMemory`] is one private tmpfs per tier,
//! made with `fsopen`/`fsmount` and never attached to any directory: invisible in every
//! mountinfo, reachable only through the daemon's mount descriptor, freed by the kernel when
//! the daemon and every reader's mapping are gone. It is mounted `huge=advise`, the one way to
//! get real 2 MiB shmem pages on a kernel whose `shmem_enabled` is `never`: a page faulted
//! through a `MADV_HUGEPAGE` mapping is a 2 MiB page, everything else is 4 KiB.
//!
//! A [`DeviceCopy`] is one file in it, sized exactly like the file it copies (a passthrough
//! read stops at the backing file's size), named by a 32-bit counter (4 bytes in every idle
//! export a tier keeps; after it wraps, a number still in use is skipped: the name is created
//! exclusively) and unlinked when the copy is dropped, unless it was *disowned*: the number
//! is then kept elsewhere (an idle export's compact form, `export.rs`) and a later
//! [`SharedMemory::reattach`] takes the name up again. It holds a descriptor only while
//! [`DeviceCopy::hold`] says so (from an open export's first in-place update to its last
//! release, `export.rs`): a tier may keep a million copies of small files, far more than a
//! process may hold descriptors, and any other use reopens one by name (a few microseconds).
//!
//! Invariants:
//! - `size=` of the tmpfs is the tier's capacity plus one huge page: the tier's own counter
//!   (`arena.rs`, lent slots) keeps copies within the capacity, and the margin only absorbs
//!   the last partial page of each copy; reaching the limit would turn a fill into EFAULT or
//!   ENOSPC (never SIGBUS: the daemon never loads from a mapping of a hole).
//! - a copy is written only through [`DeviceCopy::write_at`] (by the tier, for fills and
//!   in-place updates) and read with `pread`; mappings are temporary windows, unmapped
//!   before the call returns.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use crate::tier::types::HUGE_PAGE_SIZE;
#[cfg(test)]
use crate::tier::types::PAGE_SIZE;

/// The private tmpfs holding device copies.
pub struct SharedMemory {
    root: Arc<OwnedFd>,
    /// The next copy's number (0 is skipped: a disowned copy's).
    next: AtomicU32,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedMemory(tmpfs huge=advise)")
    }
}

/// What backs device copies the kernel serves (for the startup log and stats).
pub const SHARED_MEMORY_KIND: &str = "tmpfs huge=advise";

impl SharedMemory {
    /// Mounts a private tmpfs of `capacity` bytes (plus one huge page of margin). Needs
    /// `CAP_SYS_ADMIN`, as passthrough does.
    pub fn new(capacity: u64) -> io::Result<SharedMemory> {
        let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
        let size = (capacity + HUGE_PAGE_SIZE).to_string();
        for (key, value) in [
            ("huge", "advise"),
            ("size", size.as_str()),
            ("mode", "0700"),
        ] {
            rustix::mount::fsconfig_set_string(&fs, key, value)?;
        }
        // Without swap shmem cannot be swapped anyway; say so where the kernel knows it.
        let _ = rustix::mount::fsconfig_set_flag(&fs, "noswap");
        rustix::mount::fsconfig_create(&fs)?;
        let root = rustix::mount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )?;
        Ok(SharedMemory {
            root: Arc::new(root),
            next: AtomicU32::new(1),
        })
    }

    /// A new copy of `size` bytes (all holes), under the next free number.
    pub fn create(&self, size: u64) -> io::Result<DeviceCopy> {
        loop {
            let number = self.next.fetch_add(1, Ordering::Relaxed);
            if number == 0 {
                continue;
            }
            let fd = match rustix::fs::openat(
                &*self.root,
                copy_name(number),
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                // The counter wrapped onto a copy that still lives: take the next number.
                Err(rustix::io::Errno::EXIST) => continue,
                done => done?,
            };
            let copy = DeviceCopy {
                dir: self.root.clone(),
                number: AtomicU32::new(number),
                file: Mutex::new(Some(Arc::new(File::from(fd)))),
            };
            copy.set_len(size)?;
            return Ok(copy);
        }
    }

    /// The copy named `number`, disowned earlier ([`DeviceCopy::disown`]): it is owned again,
    /// and unlinked when dropped.
    pub fn reattach(&self, number: u32) -> DeviceCopy {
        debug_assert_ne!(number, 0, "no copy has number 0");
        DeviceCopy {
            dir: self.root.clone(),
            number: AtomicU32::new(number),
            file: Mutex::new(None),
        }
    }

    /// The size of the copy named `number` (one `statx`, no descriptor).
    pub fn len_of(&self, number: u32) -> io::Result<u64> {
        let st = rustix::fs::statat(&*self.root, copy_name(number), rustix::fs::AtFlags::empty())?;
        Ok(st.st_size as u64)
    }

    pub fn used_bytes(&self) -> u64 {
        rustix::fs::fstatfs(&self.root)
            .map(|s| (s.f_blocks - s.f_bfree) * s.f_bsize as u64)
            .unwrap_or(0)
    }
}

/// The name of copy `number` in the tmpfs: the number in hex.
fn copy_name(number: u32) -> CString {
    CString::new(format!("{number:x}")).expect("no NUL in a hex number")
}

/// One file's device copy in [`SharedMemory`].
pub struct DeviceCopy {
    /// The tmpfs root, and the number that names the copy in it ([`copy_name`]): a number,
    /// not the name, because a tier may keep a million copies and a name is one more
    /// allocation each. 0 once disowned ([`DeviceCopy::disown`]).
    dir: Arc<OwnedFd>,
    number: AtomicU32,
    /// The copy's descriptor while held ([`DeviceCopy::hold`]).
    file: Mutex<Option<Arc<File>>>,
}

impl Drop for DeviceCopy {
    fn drop(&mut self) {
        let number = *self.number.get_mut();
        if number == 0 {
            return;
        }
        // The memory goes when the last descriptor and mapping of it (readers') go too.
        if let Err(e) =
            rustix::fs::unlinkat(&*self.dir, copy_name(number), rustix::fs::AtFlags::empty())
        {
            tracing::warn!(error = %e, "cannot remove a device copy from shared memory");
        }
    }
}

impl DeviceCopy {
    /// The copy's descriptor: the held one, or a new one (closed when dropped).
    fn file(&self) -> io::Result<Arc<File>> {
        if let Some(f) = crate::lock::lock(&self.file).as_ref() {
            return Ok(f.clone());
        }
        self.open()
    }

    fn open(&self) -> io::Result<Arc<File>> {
        let number = self.number.load(Ordering::Relaxed);
        if number == 0 {
            return Err(io::Error::other(
                "a disowned device copy is not reachable from here",
            ));
        }
        let fd = rustix::fs::openat(
            &*self.dir,
            copy_name(number),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Arc::new(File::from(fd)))
    }

    /// Gives the copy's name up to the caller, who keeps its number (and takes it up again
    /// with [`SharedMemory::reattach`]): this value then reaches the copy no more and does
    /// not unlink it when dropped. Lets a held descriptor go.
    pub fn disown(&self) -> u32 {
        *crate::lock::lock(&self.file) = None;
        self.number.swap(0, Ordering::Relaxed)
    }

    /// Keeps a descriptor from now on (`true`) or lets it go (`false`).
    pub fn hold(&self, held: bool) -> io::Result<()> {
        let mut g = crate::lock::lock(&self.file);
        match (held, g.is_some()) {
            (true, false) => *g = Some(self.open()?),
            (false, true) => *g = None,
            _ => {}
        }
        Ok(())
    }

    /// Whether a descriptor is held.
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        crate::lock::lock(&self.file).is_some()
    }

    /// Calls `f` with a descriptor of the copy (to register it as a passthrough backing file).
    pub fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> io::Result<R> {
        let file = self.file()?;
        Ok(f(file.as_fd()))
    }

    /// The copy's descriptor (to register with the kernel as a passthrough backing file).
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file()?.metadata()?.len())
    }

    /// Bytes allocated to the copy.
    #[cfg(test)]
    pub fn allocated(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file()?.metadata()?.blocks() * 512)
    }

    /// Sets the copy's size (a shrink frees the pages past it; a grow adds holes).
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        self.file()?.set_len(size)
    }

    /// Reads copy bytes at `offset` (short at the copy's end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let file = self.file()?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` at `offset`, which must lie within the copy's size. A whole aligned
    /// 2 MiB extent is written through a `MADV_HUGEPAGE` window, so that a fresh extent
    /// becomes one 2 MiB page; anything else with `pwrite` (4 KiB pages where new).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let len = data.len() as u64;
        if len == HUGE_PAGE_SIZE && offset.is_multiple_of(HUGE_PAGE_SIZE) {
            return self.write_huge(data, offset);
        }
        self.file()?.write_all_at(data, offset)
    }

    fn write_huge(&self, data: &[u8], offset: u64) -> io::Result<()> {
        // SAFETY: a shared mapping of our own file in a private tmpfs, which no other process
        // can open (the tmpfs is attached nowhere; passthrough readers only read it) and which the tier
        // does not resize while it writes (the caller holds the copy's update lock); the
        // window lies within the file's size, so no access past EOF (SIGBUS) can happen.
        let mut window = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(data.len())
                .map_mut(&*self.file()?)?
        };
        if let Err(e) = window.advise(memmap2::Advice::HugePage) {
            tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) on a device copy failed");
        }
        window.copy_from_slice(data);
        Ok(())
    }

    /// Frees the pages of `[offset, offset + len)` (rounded inward to 4 KiB); the size is
    /// unchanged. A partial punch of a 2 MiB page splits it. (Exports are whole while they
    /// live, so the tier itself never punches; kept for the measurements in the tests.)
    #[cfg(test)]
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let a = offset.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let b = (offset + len) / PAGE_SIZE * PAGE_SIZE;
        if b <= a {
            return Ok(());
        }
        rustix::fs::fallocate(
            &*self.file()?,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            a,
            b - a,
        )?;
        Ok(())
    }
}

/// `ShmemHugePages` of `/proc/meminfo`, in bytes (what the kernel holds as 2 MiB shmem
/// pages system-wide; for tests and the startup check).
pub fn shmem_huge_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("ShmemHugePages:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Option<SharedMemory> {
        match SharedMemory::new(16 << 20) {
            Ok(m) => Some(m),
            Err(e) => {
                // Needs CAP_SYS_ADMIN: a test run without it has nothing to check here.
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                None
            }
        }
    }

    #[test]
    fn copies_hold_bytes_at_file_offsets_and_account_exactly() {
        let Some(mem) = memory() else { return };
        let copy = mem.create(5 << 20).unwrap();
        assert_eq!(copy.len().unwrap(), 5 << 20);
        assert_eq!(copy.allocated().unwrap(), 0, "a new copy is all holes");
        let huge = vec![7u8; HUGE_PAGE_SIZE as usize];
        copy.write_at(&huge, HUGE_PAGE_SIZE).unwrap();
        copy.write_at(b"tail", (5 << 20) - 4).unwrap();
        assert_eq!(
            copy.allocated().unwrap(),
            HUGE_PAGE_SIZE + PAGE_SIZE,
            "one extent and one page"
        );
        let mut buf = vec![0u8; 8];
        copy.read_at(&mut buf, HUGE_PAGE_SIZE - 4).unwrap();
        assert_eq!(buf, [0, 0, 0, 0, 7, 7, 7, 7]);
        // A 4 KiB punch inside the extent frees exactly 4 KiB.
        copy.punch(HUGE_PAGE_SIZE + 8192, 4096).unwrap();
        assert_eq!(copy.allocated().unwrap(), HUGE_PAGE_SIZE);
        copy.read_at(&mut buf, HUGE_PAGE_SIZE + 8192).unwrap();
        assert_eq!(buf, [0; 8]);
        assert!(mem.used_bytes() >= HUGE_PAGE_SIZE);
        // Shrinking frees what lies past the new size.
        copy.set_len(4096).unwrap();
        assert_eq!(copy.allocated().unwrap(), 0);
        let mut end = [1u8; 4];
        assert_eq!(copy.read_at(&mut end, 4094).unwrap(), 2);
    }

    #[test]
    fn a_disowned_copy_survives_its_value_and_is_reattached_by_number() {
        let Some(mem) = memory() else { return };
        let copy = mem.create(3 * PAGE_SIZE).unwrap();
        copy.hold(true).unwrap();
        copy.write_at(b"kept", PAGE_SIZE).unwrap();
        let number = copy.disown();
        assert_ne!(number, 0);
        assert!(!copy.is_held(), "disowning lets the held descriptor go");
        assert!(copy.len().is_err(), "a disowned value reaches no copy");
        drop(copy);
        assert_eq!(mem.len_of(number).unwrap(), 3 * PAGE_SIZE, "not unlinked");
        let again = mem.reattach(number);
        let mut buf = [0u8; 4];
        again.read_at(&mut buf, PAGE_SIZE).unwrap();
        assert_eq!(&buf, b"kept");
        drop(again);
        let gone = mem.len_of(number).unwrap_err();
        assert_eq!(
            gone.raw_os_error(),
            Some(libc::ENOENT),
            "owned again: unlinked"
        );
    }

    #[test]
    fn the_tmpfs_limit_refuses_writes_past_capacity() {
        let Some(mem) = memory() else { return };
        let copy = mem.create(64 << 20).unwrap();
        let huge = vec![1u8; HUGE_PAGE_SIZE as usize];
        let mut refused = false;
        for i in 0..32 {
            if copy
                .file()
                .unwrap()
                .write_all_at(&huge, i * HUGE_PAGE_SIZE)
                .is_err()
            {
                refused = true;
                break;
            }
        }
        assert!(refused, "16 MiB + margin cannot hold 64 MiB");
    }
}
