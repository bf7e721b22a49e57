//! Byte ranges for the `user.pagetier.prefetch` xattr: `A-B` (inclusive) and `A-` (to EOF).
//!
//! `A` and `B` are sizes in the [`crate::size`] grammar (binary suffixes, so `0-1G`
//! is bytes 0 through 1073741824 inclusive, literally as written). Surrounding whitespace
//! and trailing NUL bytes (as some xattr tools send) are ignored. Errors are a typed
//! [`RangeError`]; the FUSE side maps every one of them to `EINVAL`.
//!
//! Invariant of a parsed [`ByteRange`]: `start <= end` whenever `end_inclusive` is `Some`.

use crate::size::{SizeError, parse_size};

/// An inclusive byte range; `end_inclusive == None` means "to the end of the file".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end_inclusive: Option<u64>,
}

/// Why a range string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("empty range")]
    Empty,
    #[error("invalid range {0:?}: expected A-B or A- (e.g. 0-1G, 4096-8191, 0-)")]
    MissingDash(String),
    #[error("invalid range {0:?}: missing start offset")]
    MissingStart(String),
    #[error("invalid range {input:?}: bad {which} offset: {source}")]
    BadOffset {
        input: String,
        which: &'static str,
        #[source]
        source: SizeError,
    },
    #[error("invalid range {input:?}: end {end} is before start {start}")]
    Reversed { input: String, start: u64, end: u64 },
    #[error("range value is not UTF-8")]
    NotUtf8,
}

impl ByteRange {
    /// Parses an xattr value (raw bytes).
    pub fn parse_bytes(value: &[u8]) -> Result<ByteRange, RangeError> {
        let s = std::str::from_utf8(value).map_err(|_| RangeError::NotUtf8)?;
        ByteRange::parse(s)
    }

    /// Parses `A-B` or `A-`.
    pub fn parse(input: &str) -> Result<ByteRange, RangeError> {
        let s = input.trim_end_matches('\0').trim();
        if s.is_empty() {
            return Err(RangeError::Empty);
        }
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| RangeError::MissingDash(input.to_string()))?;
        if a.trim().is_empty() {
            return Err(RangeError::MissingStart(input.to_string()));
        }
        let bad = |which, source| RangeError::BadOffset {
            input: input.to_string(),
            which,
            source,
        };
        let start = parse_size(a).map_err(|e| bad("start", e))?;
        let end = if b.trim().is_empty() {
            None
        } else {
            let end = parse_size(b).map_err(|e| bad("end", e))?;
            if end < start {
                return Err(RangeError::Reversed {
                    input: input.to_string(),
                    start,
                    end,
                });
            }
            Some(end)
        };
        Ok(ByteRange {
            start,
            end_inclusive: end,
        })
    }

    /// Clips the range to a file of `file_size` bytes: `(offset, len)` with `len > 0`, or
    /// `None` when the range starts at or beyond EOF.
    pub fn clip(&self, file_size: u64) -> Option<(u64, u64)> {
        if self.start >= file_size {
            return None;
        }
        let end_excl = match self.end_inclusive {
            Some(e) => e.saturating_add(1).min(file_size),
            None => file_size,
        };
        Some((self.start, end_excl - self.start))
    }
}

impl std::str::FromStr for ByteRange {
    type Err = RangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteRange::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, end_inclusive: Option<u64>) -> ByteRange {
        ByteRange {
            start,
            end_inclusive,
        }
    }

    #[test]
    fn documented_forms() {
        assert_eq!(ByteRange::parse("0-1G"), Ok(r(0, Some(1 << 30))));
        assert_eq!(ByteRange::parse("4096-8191"), Ok(r(4096, Some(8191))));
        assert_eq!(ByteRange::parse("0-"), Ok(r(0, None)));
        assert_eq!(ByteRange::parse("1MiB-"), Ok(r(1 << 20, None)));
        assert_eq!(ByteRange::parse(" 2K - 4K \n"), Ok(r(2048, Some(4096))));
        assert_eq!(ByteRange::parse_bytes(b"0-4095\0"), Ok(r(0, Some(4095))));
        assert_eq!(ByteRange::parse("5-5"), Ok(r(5, Some(5))));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(ByteRange::parse(""), Err(RangeError::Empty));
        assert!(matches!(
            ByteRange::parse("100"),
            Err(RangeError::MissingDash(_))
        ));
        assert!(matches!(
            ByteRange::parse("-100"),
            Err(RangeError::MissingStart(_))
        ));
        assert!(matches!(
            ByteRange::parse("x-100"),
            Err(RangeError::BadOffset { which: "start", .. })
        ));
        assert!(matches!(
            ByteRange::parse("0-1Q"),
            Err(RangeError::BadOffset { which: "end", .. })
        ));
        assert!(matches!(
            ByteRange::parse("0-1-2"),
            Err(RangeError::BadOffset { which: "end", .. })
        ));
        assert!(matches!(
            ByteRange::parse("8-4"),
            Err(RangeError::Reversed {
                start: 8,
                end: 4,
                ..
            })
        ));
        assert_eq!(
            ByteRange::parse_bytes(&[0xff, b'-']),
            Err(RangeError::NotUtf8)
        );
        assert!(matches!(
            ByteRange::parse("0-99999999999999999999"),
            Err(RangeError::BadOffset { .. })
        ));
    }

    #[test]
    fn clipping() {
        assert_eq!(r(0, Some(4095)).clip(10_000), Some((0, 4096)));
        assert_eq!(r(0, None).clip(10_000), Some((0, 10_000)));
        assert_eq!(r(0, Some(u64::MAX)).clip(10), Some((0, 10)));
        assert_eq!(r(10, None).clip(10), None);
        assert_eq!(r(5, Some(5)).clip(10), Some((5, 1)));
    }

    proptest! {
        #[test]
        fn parses_what_it_prints(a in any::<u64>(), len in proptest::option::of(any::<u64>())) {
            let end = len.map(|l| a.saturating_add(l));
            let s = match end { Some(e) => format!("{a}-{e}"), None => format!("{a}-") };
            prop_assert_eq!(ByteRange::parse(&s), Ok(r(a, end)));
        }

        #[test]
        fn clip_stays_inside(a in 0u64..1 << 40, e in proptest::option::of(0u64..1 << 40), size in 0u64..1 << 40) {
            let text = match e { Some(e) => format!("{a}-{e}"), None => format!("{a}-") };
            if let Ok(range) = ByteRange::parse(&text)
                && let Some((off, len)) = range.clip(size)
            {
                prop_assert!(len > 0 && off + len <= size && off == a);
            }
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = ByteRange::parse(&s);
        }
    }
}
