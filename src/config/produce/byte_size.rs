//! Byte sizes as operators write them (`maximum_bytes_billed`).

use serde::{Deserialize, Serialize};

/// Text that is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("{0:?} is not a byte size (e.g. 10737418240 or \"10 GiB\")")]
    NotANumber(String),
    #[error(
        "{0:?} is not a byte size: the unit must be B, KB, MB, GB, TB, PB, \
         KiB, MiB, GiB, TiB or PiB"
    )]
    Unit(String),
    #[error("{0:?} is more than 2^63 - 1 bytes")]
    TooLarge(String),
}

/// A number of bytes: an integer, or a string with a unit (`"10 GiB"`,
/// `"500MB"`; KB, MB, GB, TB, PB are powers of 1000, KiB … PiB of 1024).
/// Parsed values are at most 2^63 - 1, BigQuery's int64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<ByteSize, ByteSizeError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let not_a_number = || ByteSizeError::NotANumber(text.to_owned());
        if number.is_empty() {
            return Err(not_a_number());
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "pb" => 1_000_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            "pib" => 1 << 50,
            _ => return Err(ByteSizeError::Unit(text.to_owned())),
        };
        let bytes = if number.contains('.') {
            let value: f64 = number.parse().map_err(|_| not_a_number())?;
            let bytes = (value * multiplier as f64).round();
            if bytes > i64::MAX as f64 {
                None
            } else {
                Some(bytes as u64)
            }
        } else {
            let value: u64 = number.parse().map_err(|_| not_a_number())?;
            value.checked_mul(multiplier)
        };
        match bytes {
            Some(bytes) if i64::try_from(bytes).is_ok() => Ok(ByteSize(bytes)),
            _ => Err(ByteSizeError::TooLarge(text.to_owned())),
        }
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }
}

/// `117.74 MiB`, `10 GiB`, `512 B`: binary units, two decimals at most.
impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64;
        let mut unit = "B";
        for next in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = next;
        }
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text} {unit}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes, or a string such as \"10 GiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative: a byte size is at least 0")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_units() {
        let parse = |t: &str| ByteSize::parse(t).map(ByteSize::bytes);
        assert_eq!(parse("10737418240"), Ok(10_737_418_240));
        assert_eq!(parse("10 GiB"), Ok(10 << 30));
        assert_eq!(parse("10GiB"), Ok(10 << 30));
        assert_eq!(parse("500 MB"), Ok(500_000_000));
        assert_eq!(parse("1.5 tib"), Ok(3 << 39));
        assert_eq!(parse("0"), Ok(0));
        let error = |t: &str| parse(t).unwrap_err().to_string();
        assert!(error("10 GB/s").contains("the unit must be"));
        assert!(error("ten GiB").contains("is not a byte size"));
        assert!(parse("").is_err());
        assert!(error("9000 PiB").contains("more than 2^63 - 1"));
        assert!(parse("9223372036854775808").is_err());
        assert_eq!(parse("9223372036854775807"), Ok(i64::MAX as u64));
    }

    #[test]
    fn byte_sizes_display_in_binary_units() {
        let show = |b: u64| ByteSize::from(b).to_string();
        assert_eq!(show(512), "512 B");
        assert_eq!(show(10 << 30), "10 GiB");
        assert_eq!(show(123_456_789), "117.74 MiB");
        assert_eq!(show(1536), "1.5 KiB");
    }
}
