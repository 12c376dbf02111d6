//! The cgroup v2 id each record carries: the one place that reads the
//! records' `cgroup_id` field (written by the probes with
//! `bpf_get_current_cgroup_id()`; 0 for a retransmit in kernel context).

use edgewatch_common::{ConnectCall, MapOp, Retransmit, TcpConnect};

/// A record that says which cgroup's task acted.
pub trait CgroupId {
    /// The acting task's cgroup v2 id; 0 in kernel context.
    fn cgroup_id(&self) -> u64;
}

impl CgroupId for ConnectCall {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}

impl CgroupId for TcpConnect {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}

impl CgroupId for Retransmit {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}

impl CgroupId for MapOp {
    #[inline]
    fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}
