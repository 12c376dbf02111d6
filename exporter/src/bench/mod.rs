//! `edgewatch bench ...`: measurements of this kernel that the exporter
//! itself does not need, run from the command line. Each says what
//! privileges it needs before it tries anything that would need them.

pub mod maps;

use std::fmt;

/// A capability by its number (include/uapi/linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u32, pub &'static str);

pub const CAP_NET_ADMIN: Cap = Cap(12, "CAP_NET_ADMIN");
pub const CAP_SYS_ADMIN: Cap = Cap(21, "CAP_SYS_ADMIN");
pub const CAP_PERFMON: Cap = Cap(38, "CAP_PERFMON");
pub const CAP_BPF: Cap = Cap(39, "CAP_BPF");

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
}

/// The calling process's effective capability set (`CapEff` of
/// /proc/self/status); None when it cannot be read.
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Which of `needed` the set `eff` lacks; CAP_SYS_ADMIN stands in for each
/// (kernels before 5.8 have neither CAP_BPF nor CAP_PERFMON).
pub fn missing(eff: u64, needed: &[Cap]) -> Vec<Cap> {
    let has = |c: Cap| eff & (1 << c.0) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    needed.iter().copied().filter(|&c| !has(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_checks_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let eff = parse_cap_eff(status).unwrap();
        assert_eq!(eff, (1 << 12) | (1 << 38) | (1 << 39));
        assert!(missing(eff, &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]).is_empty());
        assert_eq!(
            missing(1 << 39, &[CAP_BPF, CAP_NET_ADMIN]),
            vec![CAP_NET_ADMIN]
        );
        assert!(missing(1 << 21, &[CAP_BPF, CAP_NET_ADMIN]).is_empty());
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
