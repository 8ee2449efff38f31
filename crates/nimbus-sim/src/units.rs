//! Sizes in scenario files: memory like `64Gi` (or a number of MiB), cpu like `2`, `0.5`
//! or `500m`, with limits that reject absurd values (an error names the value).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Largest memory or disk size accepted for a host or job (64 TiB = 2^26 MiB).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024 * 1024;
/// Largest disk size accepted (1 PiB).
pub const MAX_DISK_MIB: u64 = 1024 * 1024 * 1024;
/// Largest cpu accepted for a host or job (4096 cores).
pub const MAX_CPU_MILLIS: u64 = 4096 * 1000;

/// Parses a size into MiB: a bare number is MiB; suffixes `Ki Mi Gi Ti Pi` (binary),
/// `K M G T` (decimal), `B` bytes. Rejects negatives, non-numbers and sizes over `max_mib`.
pub fn parse_mib(input: &str, what: &str, max_mib: u64) -> Result<u64, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if s.starts_with('-') {
        return Err(format!("{what} {input:?} is negative"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{what} {input:?} is not a size: write e.g. 512Mi or 4Gi"))?;
    let bytes: f64 = match unit.trim() {
        "" | "Mi" | "MiB" => 1024.0 * 1024.0,
        "B" => 1.0,
        "Ki" | "KiB" => 1024.0,
        "Gi" | "GiB" => 1024f64.powi(3),
        "Ti" | "TiB" => 1024f64.powi(4),
        "Pi" | "PiB" => 1024f64.powi(5),
        "K" | "KB" | "k" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        other => {
            return Err(format!(
                "{what} {input:?} has unknown unit {other:?}: use Mi, Gi, Ti (or M, G, T)"
            ))
        }
    };
    check_mib(
        (value * bytes / (1024.0 * 1024.0)).ceil(),
        input,
        what,
        max_mib,
    )
}

fn check_mib(mib: f64, input: &str, what: &str, max_mib: u64) -> Result<u64, String> {
    if !mib.is_finite() || mib > max_mib as f64 {
        return Err(format!(
            "{what} {input} is absurd: at most {} is accepted",
            fmt_mib(max_mib)
        ));
    }
    if mib < 0.0 {
        return Err(format!("{what} {input} is negative"));
    }
    Ok(mib as u64)
}

/// Parses cpu: cores (`2`, `0.5`) or millicores (`500m`), at most [`MAX_CPU_MILLIS`].
pub fn parse_cpu(input: &str) -> Result<u64, String> {
    let s = input.trim();
    if let Some(m) = s.strip_suffix('m') {
        let millis: f64 = m
            .trim()
            .parse()
            .map_err(|_| format!("cpu {input:?} is not a number: write cores (2, 0.5) or 500m"))?;
        return check_cpu(millis, input);
    }
    let cores: f64 = s
        .parse()
        .map_err(|_| format!("cpu {input:?} is not a number: write cores (2, 0.5) or 500m"))?;
    check_cpu(cores * 1000.0, input)
}

fn check_cpu(millis: f64, input: &str) -> Result<u64, String> {
    if !millis.is_finite() || millis > MAX_CPU_MILLIS as f64 {
        return Err(format!(
            "cpu {input} is absurd: at most {} cores are accepted",
            MAX_CPU_MILLIS / 1000
        ));
    }
    if millis < 0.0 {
        return Err(format!("cpu {input} is negative"));
    }
    Ok(millis.round() as u64)
}

/// `64 MiB`, `2 GiB`, `1.5 GiB`, `64 TiB`.
pub fn fmt_mib(mib: u64) -> String {
    const GIB: u64 = 1024;
    const TIB: u64 = 1024 * 1024;
    if mib >= TIB && mib.is_multiple_of(TIB) {
        format!("{} TiB", mib / TIB)
    } else if mib >= GIB && mib.is_multiple_of(GIB) {
        format!("{} GiB", mib / GIB)
    } else if mib >= GIB {
        format!("{:.1} GiB", mib as f64 / GIB as f64)
    } else {
        format!("{mib} MiB")
    }
}

/// A memory size (MiB) in a scenario: a string with a unit or a number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory(pub u64);

/// A disk size (MiB), like [`Memory`] but up to 1 PiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk(pub u64);

/// A cpu amount (millicores) in a scenario: cores as a number, or a string like `500m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu(pub u64);

struct SizeVisitor {
    what: &'static str,
    max_mib: u64,
}

impl Visitor<'_> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} size like \"4Gi\" or a number of MiB", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_mib(v, self.what, self.max_mib).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        check_mib(v as f64, &v.to_string(), self.what, self.max_mib).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        check_mib(v as f64, &v.to_string(), self.what, self.max_mib).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        check_mib(v.ceil(), &v.to_string(), self.what, self.max_mib).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor {
            what: "memory",
            max_mib: MAX_MEMORY_MIB,
        })
        .map(Memory)
    }
}

impl<'de> Deserialize<'de> for Disk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor {
            what: "disk",
            max_mib: MAX_DISK_MIB,
        })
        .map(Disk)
    }
}

struct CpuVisitor;

impl Visitor<'_> for CpuVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cpu cores (2, 0.5) or a string like \"500m\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_cpu(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        check_cpu(v as f64 * 1000.0, &v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        check_cpu(v as f64 * 1000.0, &v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        check_cpu(v * 1000.0, &v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CpuVisitor).map(Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = [
            ("64Mi", 64),
            ("2Gi", 2048),
            ("512", 512),
            ("1.5Gi", 1536),
            ("1Ti", 1024 * 1024),
            ("1G", 954),
        ];
        for (s, want) in ok {
            assert_eq!(parse_mib(s, "memory", MAX_MEMORY_MIB), Ok(want), "{s}");
        }
        for bad in ["", "-1Gi", "4Qi", "lots", "65Ti", "1e400"] {
            assert!(parse_mib(bad, "memory", MAX_MEMORY_MIB).is_err(), "{bad}");
        }
        assert!(parse_mib("100Ti", "disk", MAX_DISK_MIB).is_ok());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("250m"), Ok(250));
        for bad in ["-1", "x", "5000", "inf", "NaN"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
        assert!(parse_cpu("5000").unwrap_err().contains("absurd"));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_mib(64), "64 MiB");
        assert_eq!(fmt_mib(2048), "2 GiB");
        assert_eq!(fmt_mib(1536), "1.5 GiB");
        assert_eq!(fmt_mib(64 * 1024 * 1024), "64 TiB");
    }
}
