//! What this process holds in memory, from Linux's `/proc/self/status`, for benchmark reports
//! (`bitnet-pack --json`'s peak, `bitnet-run --bench`'s memory after decoding). Elsewhere the
//! figures are `None`.

/// Peak resident set size of this process in bytes (Linux `VmHWM`), for benchmark reports.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// What this process holds in memory now (Linux), split as the kernel counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resident {
    /// `VmRSS`: everything resident.
    pub total_bytes: u64,
    /// `RssAnon`: heap, stacks and anonymous mappings (the KV cache, buffers).
    pub anon_bytes: u64,
    /// `RssFile`: pages of mapped files (the model's weights, read in place, and the binary).
    pub file_bytes: u64,
}

/// This process's resident memory now; `None` where `/proc/self/status` does not say.
pub fn resident() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(Resident {
        total_bytes: status_bytes(&status, "VmRSS")?,
        anon_bytes: status_bytes(&status, "RssAnon")?,
        file_bytes: status_bytes(&status, "RssFile")?,
    })
}

/// The `key:  N kB` line of a `/proc/<pid>/status` text, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::status_bytes;

    #[test]
    fn status_lines_are_read_by_exact_key() {
        let s = "VmHWM:\t  2048 kB\nVmRSS:\t  1000 kB\nRssAnon:\t 600 kB\nRssFile:\t 400 kB\n";
        assert_eq!(status_bytes(s, "VmRSS"), Some(1000 * 1024));
        assert_eq!(status_bytes(s, "RssAnon"), Some(600 * 1024));
        assert_eq!(status_bytes(s, "VmHWM"), Some(2048 * 1024));
        // a prefix of a key is not the key
        assert_eq!(status_bytes(s, "Rss"), None);
        assert_eq!(status_bytes("VmRSS: many kB", "VmRSS"), None);
        assert_eq!(
            status_bytes("VmRSS: 18446744073709551615 kB", "VmRSS"),
            None
        );
    }
}
