//! Human-friendly resource quantities: memory sizes like `64Mi` and cpu counts like `0.5`.

/// Largest memory size accepted anywhere, in MiB (64 TiB): anything larger is a typo.
pub const MAX_MEMORY_MIB: u64 = 64 * 1024 * 1024;
/// Largest cpu request accepted, in millicores (4096 cores).
pub const MAX_CPU_MILLIS: u64 = 4096 * 1000;

/// Parses a memory size into MiB. Accepts `Ki`, `Mi`, `Gi`, `Ti`, `Pi` (binary) and
/// `K`, `M`, `G`, `T` (decimal) suffixes, `B` for bytes; a bare number means MiB.
pub fn parse_memory_mib(input: &str) -> Result<u64, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("memory size is empty: give a size like 64Mi or 2Gi".into());
    }
    if s.starts_with('-') {
        return Err(format!(
            "memory size {input:?} is negative: give a size like 64Mi or 2Gi"
        ));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("memory size {input:?} is not a number: give a size like 64Mi"))?;
    let bytes_per_unit: f64 = match unit.trim() {
        "" => 1024.0 * 1024.0,
        "B" => 1.0,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024f64.powi(2),
        "Gi" | "GiB" => 1024f64.powi(3),
        "Ti" | "TiB" => 1024f64.powi(4),
        "Pi" | "PiB" => 1024f64.powi(5),
        "K" | "KB" | "k" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        other => {
            return Err(format!(
                "memory size {input:?} has unknown unit {other:?}: use Mi, Gi (or K, M, G)"
            ))
        }
    };
    let mib = (value * bytes_per_unit / (1024.0 * 1024.0)).ceil();
    if !mib.is_finite() || mib > MAX_MEMORY_MIB as f64 {
        return Err(format!(
            "memory size {input:?} is too large: at most {} Ti is accepted",
            MAX_MEMORY_MIB / 1024 / 1024
        ));
    }
    if mib < 1.0 {
        return Err(format!("memory size {input:?} is zero: give at least 1Mi"));
    }
    Ok(mib as u64)
}

/// Parses a cpu amount (`0.5`, `2`, or `500m`) into millicores.
pub fn parse_cpu_millis(input: &str) -> Result<u64, String> {
    let s = input.trim();
    if s.starts_with('-') {
        return Err(format!(
            "cpu {input:?} is negative: give cores like 0.5 or 2"
        ));
    }
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>()
            .map_err(|_| format!("cpu {input:?} is not a number: give cores like 0.5 or 500m"))?
    } else {
        let cores: f64 = s
            .parse()
            .map_err(|_| format!("cpu {input:?} is not a number: give cores like 0.5 or 2"))?;
        if !cores.is_finite() {
            return Err(format!("cpu {input:?} is not a finite number"));
        }
        (cores * 1000.0).round() as u64
    };
    check_cpu_millis(millis).map_err(|e| format!("cpu {input:?}: {e}"))?;
    Ok(millis)
}

/// Checks a millicore count is within the accepted range.
pub fn check_cpu_millis(millis: u64) -> Result<(), String> {
    if millis == 0 {
        return Err("cpu must be at least 1 millicore (0.001)".into());
    }
    if millis > MAX_CPU_MILLIS {
        return Err(format!(
            "{millis} millicores is too large: at most {} cores",
            MAX_CPU_MILLIS / 1000
        ));
    }
    Ok(())
}

/// Parses a duration in whole seconds: `30`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration_secs(input: &str) -> Result<u64, String> {
    let t = input.trim();
    let bad = || format!("duration {input:?} is invalid: use e.g. 30s, 5m, 2h or 1d");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Formats MiB for tables: `64Mi`, `1.5Gi`.
pub fn format_mib(mib: u64) -> String {
    if mib >= 1024 * 1024 && mib.is_multiple_of(1024 * 1024) {
        format!("{}Ti", mib / 1024 / 1024)
    } else if mib >= 1024 {
        let gi = mib as f64 / 1024.0;
        if mib.is_multiple_of(1024) {
            format!("{}Gi", mib / 1024)
        } else {
            format!("{gi:.1}Gi")
        }
    } else {
        format!("{mib}Mi")
    }
}

/// Formats millicores for tables: `0.5`, `2`.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        let s = format!("{:.3}", millis as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30"), Ok(30));
        assert_eq!(parse_duration_secs("30s"), Ok(30));
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert!(parse_duration_secs("5 min").is_err());
        assert!(parse_duration_secs("-5s").is_err());
        assert!(parse_duration_secs("").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_mib("64Mi"), Ok(64));
        assert_eq!(parse_memory_mib("2Gi"), Ok(2048));
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("1M"), Ok(1));
        assert_eq!(parse_memory_mib("1048576B"), Ok(1));
        assert!(parse_memory_mib("-1").unwrap_err().contains("negative"));
        assert!(parse_memory_mib("10Pi").unwrap_err().contains("too large"));
        assert!(parse_memory_mib("abc").is_err());
        assert!(parse_memory_mib("5Xi")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_memory_mib("0").is_err());
        assert!(parse_memory_mib("").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("1e9").is_err());
        assert!(parse_cpu_millis("NaN").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_mib(64), "64Mi");
        assert_eq!(format_mib(2048), "2Gi");
        assert_eq!(format_mib(1536), "1.5Gi");
        assert_eq!(format_cpu(500), "0.5");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_cpu(1250), "1.25");
    }
}
