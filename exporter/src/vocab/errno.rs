//! Errno values to the lower-case label values metrics use. Each metric
//! family keeps a fixed set of names (bounded cardinality); anything outside
//! its set is reported as `other`.

/// Lower-case name of a (positive) errno value, if it has one we know.
pub fn name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "eperm",
        libc::ENOENT => "enoent",
        libc::EINTR => "eintr",
        libc::E2BIG => "e2big",
        libc::EAGAIN => "eagain",
        libc::ENOMEM => "enomem",
        libc::EACCES => "eacces",
        libc::EFAULT => "efault",
        libc::EBUSY => "ebusy",
        libc::EEXIST => "eexist",
        libc::EINVAL => "einval",
        libc::ENOSPC => "enospc",
        libc::EADDRINUSE => "eaddrinuse",
        libc::EADDRNOTAVAIL => "eaddrnotavail",
        libc::ENETDOWN => "enetdown",
        libc::ENETUNREACH => "enetunreach",
        libc::ECONNRESET => "econnreset",
        libc::EISCONN => "eisconn",
        libc::ETIMEDOUT => "etimedout",
        libc::ECONNREFUSED => "econnrefused",
        libc::EHOSTDOWN => "ehostdown",
        libc::EHOSTUNREACH => "ehostunreach",
        libc::EALREADY => "ealready",
        libc::EINPROGRESS => "einprogress",
        libc::EAFNOSUPPORT => "eafnosupport",
        libc::EBADF => "ebadf",
        libc::ENOTSOCK => "enotsock",
        libc::EOPNOTSUPP => "eopnotsupp",
        _ => return None,
    })
}

/// The label for a syscall-style return value: `ok` for 0 and above, the
/// errno name if it is in `allowed`, `other` otherwise.
pub fn result_label(ret: i32, allowed: &[&'static str]) -> &'static str {
    if ret >= 0 {
        return "ok";
    }
    match name(ret.saturating_neg()) {
        Some(n) if allowed.contains(&n) => n,
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results() {
        let allowed = &["econnrefused", "einprogress"];
        assert_eq!(result_label(0, allowed), "ok");
        assert_eq!(result_label(-libc::ECONNREFUSED, allowed), "econnrefused");
        assert_eq!(result_label(-libc::EINPROGRESS, allowed), "einprogress");
        assert_eq!(result_label(-libc::EPERM, allowed), "other");
        assert_eq!(result_label(-4095, allowed), "other");
        assert_eq!(result_label(i32::MIN, allowed), "other");
    }
}
