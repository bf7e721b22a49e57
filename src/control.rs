//! The control surface: the `user.pagetier.*` xattrs.
//!
//! Invariant: control xattr names are recognised here and only here; they
//! never reach STORAGE and are never listed as ordinary xattrs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// A control xattr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlXattr {
    /// get: JSON residency of the file.
    Residency,
    /// set (value = range, needs write permission like any setxattr), or
    /// get (`user.pagetier.prefetch` = the whole file, or
    /// `user.pagetier.prefetch:RANGE`; needs only read permission): fault a
    /// byte range into the tier.
    Prefetch(Option<String>),
    /// set: drop the file's device pages.
    Evict,
    /// get/set/remove: the file's access hint (`normal`, `sequential`,
    /// `random`, `epoch`, `pin`).
    Hint,
}

/// Prefix shared by every control xattr.
pub const PREFIX: &str = "user.pagetier.";

/// Recognises a control xattr name.
pub fn parse_name(name: &OsStr) -> Option<ControlXattr> {
    match name.as_bytes().strip_prefix(PREFIX.as_bytes())? {
        b"residency" => Some(ControlXattr::Residency),
        b"prefetch" => Some(ControlXattr::Prefetch(None)),
        b"evict" => Some(ControlXattr::Evict),
        b"hint" => Some(ControlXattr::Hint),
        other => {
            let range = other.strip_prefix(b"prefetch:")?;
            Some(ControlXattr::Prefetch(Some(
                String::from_utf8_lossy(range).into_owned(),
            )))
        }
    }
}

/// Parses a prefetch range value: `A-B` (inclusive), `A-` (to EOF).
/// Returns `(start, Some(last))` or `(start, None)`.
pub fn parse_range(text: &str) -> Result<(u64, Option<u64>), crate::range::RangeError> {
    let r = crate::range::ByteRange::parse(text)?;
    Ok((r.start, r.end_inclusive))
}

/// The reply of a prefetch done through getxattr: JSON whose numbers are
/// padded to a fixed width, so that the kernel's size query and the fetch
/// that follows it (each of which runs the prefetch) agree on the length.
pub fn prefetch_reply(faulted: u64, resident: u64, skipped: u64) -> Vec<u8> {
    format!(
        "{{\"faulted_bytes\":{faulted:>20},\"already_resident_bytes\":{resident:>20},\"skipped_bytes\":{skipped:>20}}}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_names() {
        assert_eq!(
            parse_name(OsStr::new("user.pagetier.prefetch")),
            Some(ControlXattr::Prefetch(None))
        );
        assert_eq!(
            parse_name(OsStr::new("user.pagetier.prefetch:0-1G")),
            Some(ControlXattr::Prefetch(Some("0-1G".into())))
        );
        assert_eq!(parse_name(OsStr::new("user.pagetier.other")), None);
        assert_eq!(parse_name(OsStr::new("user.other")), None);
    }
}
