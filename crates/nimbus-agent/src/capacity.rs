//! Detection of what a node offers: cores, memory, disk, and a default node name.

use std::path::Path;

use nimbus_api::Resources;

/// Cores visible to this process, in millicores.
pub fn detect_cpu_millis() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64 * 1000)
        .unwrap_or(1000)
}

/// Total memory from /proc/meminfo, in MiB.
pub fn detect_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

/// Size of the filesystem holding `dir`, in MiB.
pub fn detect_disk_mib(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_blocks as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024)
    }
}

/// Everything detected, before overrides.
pub fn detect(dir: &Path) -> Resources {
    Resources {
        cpu_millis: detect_cpu_millis(),
        memory_mib: detect_memory_mib(),
        disk_mib: detect_disk_mib(dir),
    }
}

/// The host name turned into a valid node name (lowercase letters, digits, '-').
pub fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("node-{name}");
    }
    name.truncate(63);
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() || name == "node" {
        "node-1".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_sane() {
        let r = detect(Path::new("/"));
        assert!(r.cpu_millis >= 1000);
        assert!(r.memory_mib >= 64);
        assert!(r.disk_mib > 0);
        assert!(nimbus_api::validate_name("node", &default_node_name()).is_ok());
    }
}
