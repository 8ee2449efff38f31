//! `Resources`: the three schedulable dimensions, their arithmetic and human wording.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of each schedulable resource (cpu in millicores, memory and disk in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

/// One of the three dimensions of [`Resources`], in the order the scheduler checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Memory,
    Cpu,
    Disk,
}

impl Dimension {
    /// All dimensions, memory first (the usual binding constraint), then cpu, then disk.
    pub const ALL: [Dimension; 3] = [Dimension::Memory, Dimension::Cpu, Dimension::Disk];

    /// The word used in reasons: `memory`, `cpu` or `disk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Memory => "memory",
            Dimension::Cpu => "cpu",
            Dimension::Disk => "disk",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Resources {
    /// No resources at all.
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_mib: 0,
        disk_mib: 0,
    };

    /// Builds an amount from cpu millicores, memory MiB and disk MiB.
    pub const fn new(cpu_millis: u64, memory_mib: u64, disk_mib: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_mib,
            disk_mib,
        }
    }

    /// The amount in dimension `d`.
    pub fn get(self, d: Dimension) -> u64 {
        match d {
            Dimension::Memory => self.memory_mib,
            Dimension::Cpu => self.cpu_millis,
            Dimension::Disk => self.disk_mib,
        }
    }

    /// Per-dimension `self - o`, clamped at zero.
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(o.disk_mib),
        }
    }

    /// Per-dimension `self + o`, clamped at `u64::MAX`.
    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            disk_mib: self.disk_mib.saturating_add(o.disk_mib),
        }
    }

    /// Whether `need` fits in `self` in every dimension.
    pub fn fits(self, need: Resources) -> bool {
        need.memory_mib <= self.memory_mib
            && need.cpu_millis <= self.cpu_millis
            && need.disk_mib <= self.disk_mib
    }

    /// The first dimension (memory, cpu, disk) in which `need` does not fit in `self`.
    pub fn first_short(self, need: Resources) -> Option<Dimension> {
        Dimension::ALL
            .into_iter()
            .find(|&d| need.get(d) > self.get(d))
    }

    /// Whether every dimension is zero.
    pub fn is_zero(self) -> bool {
        self == Resources::ZERO
    }
}

/// Formats a MiB amount, switching to GiB / TiB when it divides evenly.
pub(crate) fn fmt_mib(mib: u64) -> String {
    const GIB: u64 = 1024;
    const TIB: u64 = 1024 * 1024;
    if mib >= TIB && mib.is_multiple_of(TIB) {
        format!("{} TiB", mib / TIB)
    } else if mib >= GIB && mib.is_multiple_of(GIB) {
        format!("{} GiB", mib / GIB)
    } else {
        format!("{mib} MiB")
    }
}

/// Formats millicores as cores: `500` -> `0.5`, `2000` -> `2`, `1250` -> `1.25`.
pub(crate) fn fmt_cpu(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Joins phrases as `a`, `a and b`, `a, b and c`.
pub(crate) fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl fmt::Display for Resources {
    /// Names the non-zero dimensions: `64 MiB memory and 0.5 cpu`; `no resources` when all zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::with_capacity(3);
        if self.memory_mib > 0 {
            parts.push(format!("{} memory", fmt_mib(self.memory_mib)));
        }
        if self.cpu_millis > 0 {
            parts.push(format!("{} cpu", fmt_cpu(self.cpu_millis)));
        }
        if self.disk_mib > 0 {
            parts.push(format!("{} disk", fmt_mib(self.disk_mib)));
        }
        if parts.is_empty() {
            f.write_str("no resources")
        } else {
            f.write_str(&join_and(&parts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording() {
        let cases = [
            (Resources::new(500, 64, 0), "64 MiB memory and 0.5 cpu"),
            (Resources::new(2000, 2048, 0), "2 GiB memory and 2 cpu"),
            (Resources::new(1250, 0, 10), "1.25 cpu and 10 MiB disk"),
            (
                Resources::new(1, 1, 1),
                "1 MiB memory, 0.001 cpu and 1 MiB disk",
            ),
            (Resources::new(0, 1024 * 1024, 0), "1 TiB memory"),
            (Resources::ZERO, "no resources"),
        ];
        for (r, want) in cases {
            assert_eq!(r.to_string(), want, "{r:?}");
        }
    }

    #[test]
    fn fits_and_first_short() {
        let free = Resources::new(1000, 1024, 10);
        assert!(free.fits(Resources::new(1000, 1024, 10)));
        assert!(free.fits(Resources::ZERO));
        assert_eq!(free.first_short(Resources::new(1000, 1024, 10)), None);
        assert_eq!(
            free.first_short(Resources::new(2000, 2048, 0)),
            Some(Dimension::Memory)
        );
        assert_eq!(
            free.first_short(Resources::new(2000, 1, 11)),
            Some(Dimension::Cpu)
        );
        assert_eq!(
            free.first_short(Resources::new(0, 0, 11)),
            Some(Dimension::Disk)
        );
    }

    #[test]
    fn saturating_arithmetic() {
        let a = Resources::new(5, 5, 5);
        assert_eq!(
            a.saturating_sub(Resources::new(10, 1, 5)),
            Resources::new(0, 4, 0)
        );
        assert_eq!(
            Resources::new(u64::MAX, 1, 0).saturating_add(a),
            Resources::new(u64::MAX, 6, 5)
        );
    }
}
