//! The embedded tracing object, fitted to the running kernel before load.
//!
//! aya 0.14 cannot relocate kfunc calls (`__ksym` externs), so
//! exporter-ebpf/src/probes/map.bpf.c emits its one kfunc call
//! (`bpf_map_sum_elem_count`, 6.6+) as a raw BPF_PSEUDO_KFUNC_CALL
//! instruction with a placeholder imm. This module writes the kfunc's BTF
//! id from /sys/kernel/btf/vmlinux into it, or, where the kernel lacks the
//! kfunc, turns the call into `r0 = -1`, which the program reports as
//! "count unknown".

use aya::Btf;
use aya_obj::btf::BtfKind;

/// `call` with src_reg 2 (kfunc) and imm 0x7ffeab01, as it sits in the object.
const PLACEHOLDER: [u8; 8] = [0x85, 0x20, 0x00, 0x00, 0x01, 0xab, 0xfe, 0x7f];
/// `r0 = -1` (BPF_ALU64 | BPF_MOV | BPF_K).
const UNKNOWN: [u8; 8] = [0xb7, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff];

pub const SUM_ELEM_COUNT: &str = "bpf_map_sum_elem_count";

/// The BTF id of a kernel function in the running kernel, if it has it.
pub fn kernel_func_id(btf: Option<&Btf>, name: &str) -> Option<u32> {
    btf?.id_by_type_name_kind(name, BtfKind::Func).ok()
}

/// Returns the object with every placeholder call patched, and how many
/// there were.
pub fn patch_kfunc(obj: &[u8], btf_id: Option<u32>) -> (Vec<u8>, usize) {
    let replacement = match btf_id {
        Some(id) => {
            let mut r = PLACEHOLDER;
            r[4..].copy_from_slice(&id.to_le_bytes());
            r
        }
        None => UNKNOWN,
    };
    let mut out = obj.to_vec();
    let mut n = 0;
    let mut i = 0;
    while i + 8 <= out.len() {
        if out[i..i + 8] == PLACEHOLDER {
            out[i..i + 8].copy_from_slice(&replacement);
            n += 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_has_exactly_one_placeholder() {
        let (patched, n) = patch_kfunc(edgewatch_ebpf::edgewatch(), Some(0x1234));
        assert_eq!(n, 1);
        let (_, again) = patch_kfunc(&patched, Some(0x1234));
        assert_eq!(again, 0);
        let needle = [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0];
        assert!(patched.windows(8).any(|w| w == needle));
    }

    #[test]
    fn missing_kfunc_becomes_unknown() {
        let (patched, n) = patch_kfunc(edgewatch_ebpf::edgewatch(), None);
        assert_eq!(n, 1);
        assert!(patched.windows(8).any(|w| w == UNKNOWN));
    }
}
