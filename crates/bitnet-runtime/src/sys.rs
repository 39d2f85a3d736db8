//! What the operating system says about this process.

/// A `Field:   N kB` line of a /proc file, in bytes; `None` off Linux or when the field is absent.
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`); `None` off Linux.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    kib_field("/proc/self/status", field)
}

/// A field of `/proc/meminfo` in bytes (`MemTotal`, `MemAvailable`); `None` off Linux.
pub fn meminfo(field: &str) -> Option<u64> {
    kib_field("/proc/meminfo", field)
}

/// Resident memory now.
pub fn rss() -> Option<u64> {
    proc_status_bytes("VmRSS")
}

/// Peak resident memory since the start (or the last [`reset_peak_rss`]).
pub fn peak_rss() -> Option<u64> {
    proc_status_bytes("VmHWM")
}

/// Resets the peak-RSS mark (Linux: writing 5 to `/proc/self/clear_refs`), so a peak measured next
/// covers what runs next, not what ran before.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Memory the system could give this process now (Linux `MemAvailable`), in bytes.
pub fn mem_available() -> Option<u64> {
    meminfo("MemAvailable")
}

/// This machine's logical cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_resident_set_is_read_and_the_peak_is_at_least_it() {
        let rss = super::rss().expect("VmRSS on Linux");
        assert!(rss > 0);
        assert!(super::peak_rss().expect("VmHWM on Linux") >= rss);
        assert_eq!(
            super::proc_status_bytes("VmRS"),
            None,
            "a prefix is not a field"
        );
    }
}
