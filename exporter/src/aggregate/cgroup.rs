//! The cgroup v2 id each record carries: the one place that reads the
//! records' `cgroup_id` field (written by the probes with
//! `bpf_get_current_cgroup_id()`; 0 for a retransmit in kernel context).
//!
//! PENDING F7: the kernel side that adds `cgroup_id: u64` to
//! `ew_connect_call`, `ew_tcp_connect`, `ew_retransmit` and `ew_map_op` is
//! not merged yet. Until it is, no record carries an id and each impl
//! below returns 0 (every record reads as kernel context, `cgroup="_kernel"`).
//! Once it is, each returns `self.cgroup_id`; nothing else changes.

use edgewatch_common::{ConnectCall, MapOp, Retransmit, TcpConnect};

/// A record that says which cgroup's task acted.
pub trait CgroupId {
    /// The acting task's cgroup v2 id; 0 in kernel context.
    fn cgroup_id(&self) -> u64;
}

impl CgroupId for ConnectCall {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        0
    }
}

impl CgroupId for TcpConnect {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        0
    }
}

impl CgroupId for Retransmit {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        0
    }
}

impl CgroupId for MapOp {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        0
    }
}
