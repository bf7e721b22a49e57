//! Per-file access hints (the `user.pagetier.hint` xattr values).
//!
//! A hint changes how the tier treats one file; it never changes the bytes a read returns.
//! - [`Hint::Sequential`]: readahead starts at its largest window and every read may fault
//!   huge pages;
//! - [`Hint::Random`]: no readahead and no huge faults (each read faults the 4 KiB pages it
//!   touches);
//! - [`Hint::Epoch`]: the file is read once per epoch in a shuffled order; the eviction
//!   policy keeps whatever of it is resident instead of churning (see `policy/mod.rs`);
//! - [`Hint::Pin`]: the file's pages stay resident until the hint is changed, within
//!   `TierOptions::pin_share` of the tier; pages beyond that share are evictable as usual.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A per-file access hint; see the module docs. `Normal` is "no hint".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hint {
    #[default]
    Normal,
    Sequential,
    Random,
    Epoch,
    Pin,
}

impl Hint {
    /// Every hint, in the order of [`Hint::name`].
    pub const ALL: [Hint; 5] = [
        Hint::Normal,
        Hint::Sequential,
        Hint::Random,
        Hint::Epoch,
        Hint::Pin,
    ];

    /// The xattr value naming this hint.
    pub fn name(self) -> &'static str {
        match self {
            Hint::Normal => "normal",
            Hint::Sequential => "sequential",
            Hint::Random => "random",
            Hint::Epoch => "epoch",
            Hint::Pin => "pin",
        }
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An xattr value that names no hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hint {0:?}: expected one of normal, sequential, random, epoch, pin")]
pub struct HintError(pub String);

impl FromStr for Hint {
    type Err = HintError;

    /// Parses an xattr value: surrounding whitespace (a trailing newline from `echo`) and
    /// ASCII case are ignored; the empty string means `normal`.
    fn from_str(s: &str) -> Result<Hint, HintError> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(Hint::Normal);
        }
        Hint::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| HintError(t.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for h in Hint::ALL {
            assert_eq!(h.name().parse::<Hint>(), Ok(h));
            assert_eq!(h.to_string(), h.name());
        }
        assert_eq!("Epoch\n".parse::<Hint>(), Ok(Hint::Epoch));
        assert_eq!("".parse::<Hint>(), Ok(Hint::Normal));
        let e = "fast".parse::<Hint>().unwrap_err();
        assert!(e.to_string().contains("pin"), "{e}");
    }
}
