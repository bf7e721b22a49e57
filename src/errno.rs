//! The one error type of the filesystem core: a POSIX errno.
//!
//! Backing-directory failures pass straight through as their own errno
//! (never clobbered); the core's own refusals name the errno a POSIX program
//! expects (`EROFS` for device-view writes, `EINVAL` for malformed control
//! values, ...). The FUSE adapter turns it into `fuser::Errno` in one place.

use std::fmt;
use std::io;

/// A POSIX error number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// Result of a filesystem-core operation.
pub type FsResult<T> = Result<T, Errno>;

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);

    /// The raw errno value.
    pub fn raw(self) -> i32 {
        self.0
    }

    /// Does this errno say the mount, its storage or the daemon is in trouble (an I/O
    /// error, an inode the kernel still names but the mount no longer knows, memory or
    /// descriptors exhausted, a broken connection), rather than answer a program's
    /// ordinary request (`ENOENT`, `EEXIST`, `ENOTEMPTY`, `ENODATA`, `EAGAIN`, `EROFS` in
    /// the device view, `EACCES`, `EBADF` for an operation the handle does not support,
    /// `ENOSPC` from a full STORAGE, which the program reports itself, ...)? The FUSE
    /// adapter logs the first kind at `warn` and the second at `debug`.
    pub fn is_trouble(self) -> bool {
        matches!(
            self.0,
            libc::EIO
                | libc::ESTALE
                | libc::ENOMEM
                | libc::EFAULT
                | libc::ENFILE
                | libc::EMFILE
                | libc::ENOTCONN
                | libc::EUCLEAN
        )
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_refusals_are_not_trouble_and_io_errors_are() {
        for e in [
            libc::ENOENT,
            libc::EEXIST,
            libc::ENOTEMPTY,
            libc::ENODATA,
            libc::EAGAIN,
            libc::EROFS,
            libc::EACCES,
            libc::EPERM,
            libc::ENOTTY,
            libc::ERANGE,
            libc::EINVAL,
            libc::EBADF,
            libc::ENOSPC,
        ] {
            assert!(!Errno(e).is_trouble(), "{:?}", Errno(e));
        }
        for e in [libc::EIO, libc::ESTALE, libc::ENOMEM, libc::EMFILE] {
            assert!(Errno(e).is_trouble(), "{:?}", Errno(e));
        }
    }
}
