//! Human byte sizes: `512MiB`, `8G`, `1.5G`, `1073741824`, `4 KiB`.
//!
//! Grammar (ASCII, case-insensitive, surrounding whitespace ignored):
//! `NUMBER [SPACES] [SUFFIX]` where `NUMBER` is decimal digits with an optional `.fraction`
//! (at most 9 fractional digits, and only together with a suffix larger than bytes), and
//! `SUFFIX` is one of `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB`.
//!
//! Every multiplier is **binary (1024-based)**, including `KB`/`MB`/`GB`/`TB`: on a page
//! cache nobody means 10^9 bytes, and one meaning per letter is easier to remember.
//! A fraction is truncated toward zero to a whole byte (`1.5K` = 1536, `0.3K` = 307).
//!
//! [`parse_size`] accepts 0; [`parse_capacity`] (for `--device-capacity`) rejects 0 and
//! anything below one 2 MiB chunk. Values that do not fit in `u64` are an error, never wrap.

use std::fmt;
use std::str::FromStr;

/// Why a size string was rejected. Display gives a one-line message naming the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error(
        "invalid size {0:?}: expected a number with an optional suffix (B, K, KiB, M, MiB, G, GiB, T, TiB), e.g. 512MiB"
    )]
    Invalid(String),
    #[error("invalid size {0:?}: unknown suffix (use B, K, KiB, M, MiB, G, GiB, T or TiB)")]
    UnknownSuffix(String),
    #[error("invalid size {0:?}: a fraction needs a unit suffix (e.g. 1.5G)")]
    FractionOfByte(String),
    #[error("size {0:?} is too large (max 16 EiB - 1)")]
    Overflow(String),
    #[error("size must be greater than zero")]
    Zero,
    #[error("device capacity {0:?} is smaller than one 2 MiB chunk")]
    BelowOneChunk(String),
}

/// Binary multiplier for a (lower-cased) suffix, `None` if unknown.
fn multiplier(suffix: &str) -> Option<u64> {
    Some(match suffix {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    })
}

/// Parses a human size (see module docs). `0` is accepted.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(num_end);
    let suffix = rest.trim_start().to_ascii_lowercase();
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    if int_part.is_empty() && frac_part.is_none_or(str::is_empty) {
        return Err(SizeError::Invalid(input.to_string()));
    }
    let mult = multiplier(&suffix).ok_or_else(|| {
        if suffix.chars().all(|c| c.is_ascii_alphabetic()) {
            SizeError::UnknownSuffix(input.to_string())
        } else {
            SizeError::Invalid(input.to_string())
        }
    })?;
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part
            .parse::<u64>()
            .map_err(|_| SizeError::Overflow(input.to_string()))? as u128
    };
    let mut total = int * mult as u128;
    if let Some(frac) = frac_part {
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SizeError::Invalid(input.to_string()));
        }
        if mult == 1 {
            return Err(SizeError::FractionOfByte(input.to_string()));
        }
        let digits: u128 = frac
            .parse()
            .map_err(|_| SizeError::Invalid(input.to_string()))?;
        total += digits * mult as u128 / 10u128.pow(frac.len() as u32);
    }
    u64::try_from(total).map_err(|_| SizeError::Overflow(input.to_string()))
}

/// Parses `--device-capacity`: like [`parse_size`] but rejects 0 and sizes below 2 MiB.
pub fn parse_capacity(input: &str) -> Result<u64, SizeError> {
    let v = parse_size(input)?;
    if v == 0 {
        return Err(SizeError::Zero);
    }
    if v < crate::tier::HUGE_PAGE_SIZE {
        return Err(SizeError::BelowOneChunk(input.trim().to_string()));
    }
    Ok(v)
}

/// A byte count that parses with [`parse_size`] and prints in the largest exact binary unit
/// (`1GiB`, `1536KiB`, `4097B`). Handy as a clap `value_parser` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, m) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(m) {
                return write!(f, "{}{}", self.0 / m, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_documented_forms() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8g"), Ok(8 << 30));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size(" 2MB \n"), Ok(2 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("0.3K"), Ok(307));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("16383P").is_err());
    }

    #[test]
    fn rejects_garbage_with_typed_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(parse_size("abc"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1X"), Err(SizeError::UnknownSuffix(_))));
        assert!(matches!(
            parse_size("1PiB"),
            Err(SizeError::UnknownSuffix(_))
        ));
        assert!(matches!(
            parse_size("1.5"),
            Err(SizeError::FractionOfByte(_))
        ));
        assert!(matches!(parse_size("1..5G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1.G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("."), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1G5"), Err(SizeError::Invalid(_))));
        assert!(matches!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn capacity_rules() {
        assert_eq!(parse_capacity("0"), Err(SizeError::Zero));
        assert_eq!(parse_capacity("0G"), Err(SizeError::Zero));
        assert!(matches!(
            parse_capacity("1MiB"),
            Err(SizeError::BelowOneChunk(_))
        ));
        assert_eq!(parse_capacity("2MiB"), Ok(2 << 20));
        assert_eq!(parse_capacity("1GiB"), Ok(1 << 30));
        let msg = parse_capacity("12Q").unwrap_err().to_string();
        assert!(msg.contains("12Q"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for (v, s) in [
            (1u64 << 30, "1GiB"),
            (1536, "1536B"),
            (3 << 19, "1536KiB"),
            (0, "0B"),
            (4097, "4097B"),
        ] {
            assert_eq!(ByteSize(v).to_string(), s);
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(v)));
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v in any::<u64>()) {
            prop_assert_eq!(ByteSize(v).to_string().parse::<ByteSize>(), Ok(ByteSize(v)));
        }

        #[test]
        fn suffix_multiplies(v in 0u64..(1 << 20), i in 0usize..5) {
            let (suf, m) = [("", 1u64), ("K", 1 << 10), ("MiB", 1 << 20), ("gb", 1 << 30), ("T", 1 << 40)][i];
            prop_assert_eq!(parse_size(&format!("{v}{suf}")), Ok(v * m));
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
            let _ = parse_capacity(&s);
        }
    }
}
