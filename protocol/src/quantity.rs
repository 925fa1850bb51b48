//! Resource quantities and durations, with the units operators write in specs.
//!
//! CPU is counted in millicores (`250m`, `0.5`, `2`), memory in bytes (`256Mi`, `1Gi`, `512M`,
//! `1048576`), durations in milliseconds (`100ms`, `5s`, `2m`, `1h30m`). Parsing is exact integer
//! arithmetic, so the same text gives the same number on every platform.

use std::fmt;

use serde::{Deserialize, Serialize};

/// CPU in thousandths of a core.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Millicores(pub u32);

/// A number of bytes (memory).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Bytes(pub u64);

/// Largest CPU quantity accepted: 4096 cores.
pub const MILLICORES_MAX: u64 = 4096 * 1000;

/// Parses a CPU quantity: `250m` (millicores), `0.5` or `2` (cores, up to three decimals).
pub fn parse_cpu(text: &str) -> Result<Millicores, String> {
    let trimmed = text.trim();
    let millis = match trimmed.strip_suffix('m') {
        Some(m) => parse_integer(m),
        None => parse_decimal(trimmed, 3),
    }
    .map_err(|_| format!("must be cores (0.5, 2) or millicores (250m), got {text:?}"))?;
    if millis > MILLICORES_MAX {
        return Err(format!("must be at most 4096 cores, got {text:?}"));
    }
    Ok(Millicores(millis as u32))
}

/// Parses a memory quantity: a byte count with an optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or
/// decimal (`k`, `M`, `G`, `T`) suffix; a fraction is allowed (`1.5Gi`).
pub fn parse_memory(text: &str) -> Result<Bytes, String> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let text = text.trim();
    let (number, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    let (whole, frac, frac_digits) = split_decimal(number, 6).map_err(|_| {
        format!("must be bytes with an optional unit such as 256Mi, 1Gi or 512M, got {text:?}")
    })?;
    let scale = 10u128.pow(frac_digits);
    let bytes = (whole as u128 * scale + frac as u128) * unit as u128 / scale;
    u64::try_from(bytes)
        .map(Bytes)
        .map_err(|_| format!("must be less than 16Ei, got {text:?}"))
}

/// Parses a duration into milliseconds: one or more `<integer><unit>` parts with units `ms`,
/// `s`, `m`, `h` (e.g. `100ms`, `5s`, `1h30m`).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let original = text;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("must be a duration such as 5s, 100ms or 1h30m, got \"\"".into());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!(
                "must be a duration such as 5s, 100ms or 1h30m, got {original:?}"
            ));
        }
        let value = parse_integer(&rest[..digits])
            .map_err(|_| format!("must be at most a few centuries, got {original:?}"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(format!(
                "needs a unit (ms, s, m or h) after {value}, got {original:?}"
            ));
        };
        rest = &rest[len..];
        total = value
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("must be at most a few centuries, got {original:?}"))?;
    }
    Ok(total)
}

/// Formats milliseconds the way `parse_duration_ms` reads them, in the largest exact unit.
pub fn format_duration_ms(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, unit) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

fn parse_integer(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a whole number"));
    }
    text.parse::<u64>()
        .map_err(|_| format!("{text:?} is too large"))
}

/// Splits `12.345` into (12, 345, 3); at most `frac_digits_max` decimals.
fn split_decimal(text: &str, frac_digits_max: u32) -> Result<(u64, u64, u32), String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let whole = if whole.is_empty() && !frac.is_empty() {
        0
    } else {
        parse_integer(whole)?
    };
    if frac.is_empty() {
        return Ok((whole, 0, 0));
    }
    if frac.len() > frac_digits_max as usize {
        return Err(format!("{text:?} has more than {frac_digits_max} decimals"));
    }
    Ok((whole, parse_integer(frac)?, frac.len() as u32))
}

/// Parses a decimal and scales it by 10^`decimals` exactly.
fn parse_decimal(text: &str, decimals: u32) -> Result<u64, String> {
    let (whole, frac, frac_digits) = split_decimal(text, decimals)?;
    let scaled = whole
        .checked_mul(10u64.pow(decimals))
        .and_then(|w| w.checked_add(frac * 10u64.pow(decimals - frac_digits)))
        .ok_or_else(|| format!("{text:?} is too large"))?;
    Ok(scaled)
}

/// A quantity as written in a spec document: text (`"256Mi"`) or a bare number (`2`, `0.5`).
/// Kept as text so the unit parsers above give one error message for every spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QuantityText(pub String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"250m\", \"256Mi\", \"5s\" or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(QuantityText(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(QuantityText(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl From<&str> for QuantityText {
    fn from(text: &str) -> Self {
        QuantityText(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accepts_cores_and_millicores() {
        assert_eq!(parse_cpu("250m"), Ok(Millicores(250)));
        assert_eq!(parse_cpu("0.5"), Ok(Millicores(500)));
        assert_eq!(parse_cpu("2"), Ok(Millicores(2000)));
        assert_eq!(parse_cpu(".25"), Ok(Millicores(250)));
        assert!(parse_cpu("0.0001").is_err());
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("lots").is_err());
        assert!(parse_cpu("5000").is_err());
    }

    #[test]
    fn memory_accepts_binary_and_decimal_units() {
        assert_eq!(parse_memory("256Mi"), Ok(Bytes(256 << 20)));
        assert_eq!(parse_memory("1.5Gi"), Ok(Bytes(3 << 29)));
        assert_eq!(parse_memory("512M"), Ok(Bytes(512_000_000)));
        assert_eq!(parse_memory("1024"), Ok(Bytes(1024)));
        assert!(parse_memory("12XB").is_err());
        assert!(parse_memory("99999999999Ti").is_err());
    }

    #[test]
    fn durations_accept_compound_units() {
        assert_eq!(parse_duration_ms("100ms"), Ok(100));
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 100, 1_000, 90_000, 3_600_000, 1_500] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }
        for bytes in [1, 1024, 256 << 20, 3 << 29, 1_000_000] {
            assert_eq!(parse_memory(&Bytes(bytes).to_string()), Ok(Bytes(bytes)));
        }
        for m in [1, 250, 1000, 1500, 4_000_000] {
            assert_eq!(parse_cpu(&Millicores(m).to_string()), Ok(Millicores(m)));
        }
    }
}
