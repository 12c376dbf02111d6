//! What the running kernel supports, found out independently of edgewatch:
//! by trying (a minimal fentry or tp_btf program loaded and attached through
//! raw bpf(2)), by reading its BTF (/sys/kernel/btf/vmlinux: which
//! tracepoints have BTF-enabled forms and with which arguments, which kfuncs
//! exist) and by looking for the kprobe PMU. Tests derive the attach mode
//! each probe's chain must pick from this, not from the machine they were
//! written on, so the same suite holds on 6.1, 6.12 and this host's 6.18.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{collections::HashMap, sync::OnceLock};

use super::bpf::{bpf, put32, put64};

const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_TRACE_FENTRY: u32 = 24;

const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_FUNC: u32 = 12;
const BTF_KIND_FUNC_PROTO: u32 = 13;

/// One BTF type, as much as these checks need.
#[derive(Debug, Clone, Copy)]
struct BtfType {
    kind: u32,
    vlen: u32,
    /// `type` for pointers, typedefs and functions.
    target: u32,
}

/// The kernel's BTF type table: ids by (kind, name), and each type.
#[derive(Debug, Default)]
pub struct Btf {
    types: Vec<BtfType>,
    by_name: HashMap<(u32, String), u32>,
}

impl Btf {
    /// Parses /sys/kernel/btf/vmlinux (the format of
    /// Documentation/bpf/btf.rst: a header, the type section, the strings).
    pub fn from_sys_fs() -> Option<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
        Self::parse(&data)
    }

    fn parse(data: &[u8]) -> Option<Self> {
        let u32_at = |off: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
        };
        if data.get(0..2)? != [0x9f, 0xeb] {
            return None;
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let str_off = u32_at(16)? as usize;
        let types_start = hdr_len + type_off;
        let strings = data.get(hdr_len + str_off..)?;
        let name = |off: u32| -> String {
            let s = &strings[(off as usize).min(strings.len())..];
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        // Type ids start at 1; id 0 is void.
        let mut btf = Self {
            types: vec![BtfType {
                kind: 0,
                vlen: 0,
                target: 0,
            }],
            by_name: HashMap::new(),
        };
        let mut off = types_start;
        while off < types_start + type_len {
            let name_off = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let target = u32_at(off + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            off += 12;
            off += match kind {
                1 | 14 | 17 => 4,                      // int, var, decl_tag
                3 => 12,                               // array
                4 | 5 | 15 | 19 => 12 * vlen as usize, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen as usize,           // enum, func_proto
                _ => 0,
            };
            let id = btf.types.len() as u32;
            btf.types.push(BtfType { kind, vlen, target });
            if name_off != 0 {
                btf.by_name.insert((kind, name(name_off)), id);
            }
        }
        Some(btf)
    }

    fn id(&self, kind: u32, name: &str) -> Option<u32> {
        self.by_name.get(&(kind, name.to_string())).copied()
    }

    /// Whether the kernel has a function (or kfunc) of this name.
    pub fn has_func(&self, name: &str) -> bool {
        self.id(BTF_KIND_FUNC, name).is_some()
    }

    /// The BTF id of the typedef behind `tp_btf/<tracepoint>`.
    pub fn tracepoint_id(&self, tracepoint: &str) -> Option<u32> {
        self.id(BTF_KIND_TYPEDEF, &format!("btf_trace_{tracepoint}"))
    }

    /// Arguments a BTF-enabled tracepoint passes its programs (without the
    /// leading `void *__data`): `btf_trace_<tp>` is a typedef of a pointer
    /// to the tracepoint's function prototype.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Option<u32> {
        let typedef = self.types[self.tracepoint_id(tracepoint)? as usize];
        let ptr = *self.types.get(typedef.target as usize)?;
        (ptr.kind == BTF_KIND_PTR).then_some(())?;
        let proto = *self.types.get(ptr.target as usize)?;
        (proto.kind == BTF_KIND_FUNC_PROTO).then_some(proto.vlen.checked_sub(1)?)
    }

    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.id(BTF_KIND_FUNC, name)
    }
}

/// Loads `r0 = 0; exit` as a tracing program of `attach_type` on BTF id
/// `btf_id` and attaches it (BPF_RAW_TRACEPOINT_OPEN), then closes both.
/// Err carries the errno and the step that failed.
fn try_tracing(attach_type: u32, btf_id: u32) -> Result<(), String> {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut a = [0u8; 128];
    put32(&mut a, 0, BPF_PROG_TYPE_TRACING);
    put32(&mut a, 4, 2);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    a[48..55].copy_from_slice(b"ew_test");
    put32(&mut a, 68, attach_type);
    put32(&mut a, 108, btf_id);
    let prog = bpf(BPF_PROG_LOAD, &mut a);
    if prog < 0 {
        return Err(format!(
            "load: {}",
            std::io::Error::from_raw_os_error(-prog as i32)
        ));
    }
    let mut a = [0u8; 128];
    put32(&mut a, 8, prog as u32);
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a);
    // SAFETY: closing fds we own.
    unsafe {
        libc::close(prog as i32);
        if link > 0 {
            libc::close(link as i32);
        }
    }
    if link < 0 {
        return Err(format!(
            "attach: {}",
            std::io::Error::from_raw_os_error(-link as i32)
        ));
    }
    Ok(())
}

/// What the running kernel offers edgewatch's probes.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// (major, minor) from the release.
    pub version: (u32, u32),
    /// fentry on `__sys_bpf`: Ok, or why not (tried).
    pub fentry: Result<(), String>,
    /// The kprobe PMU (/sys/bus/event_source/devices/kprobe/type).
    pub kprobe: bool,
    /// tp_btf on `inet_sock_set_state`: Ok, or why not (tried).
    pub tp_btf_sock_state: Result<(), String>,
    /// tp_btf on `tcp_retransmit_skb` with the `err` argument edgewatch's
    /// program takes (6.13+; Debian's 6.12 has none): Ok, or why not.
    pub tp_btf_retransmit: Result<(), String>,
    /// The kfunc `bpf_map_sum_elem_count` (6.6+).
    pub sum_elem_count: bool,
}

/// The running kernel, probed once per test binary.
pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let k = probe();
        eprintln!("kernel under test: {k:#?}");
        k
    })
}

fn probe() -> Kernel {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("/proc/sys/kernel/osrelease")
        .trim()
        .to_string();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let btf = Btf::from_sys_fs();
    let no_btf = || Err("no /sys/kernel/btf/vmlinux".to_string());
    let Some(btf) = btf else {
        return Kernel {
            release,
            version,
            fentry: no_btf(),
            kprobe: kprobe_pmu(),
            tp_btf_sock_state: no_btf(),
            tp_btf_retransmit: no_btf(),
            sum_elem_count: false,
        };
    };
    let fentry = match btf.func_id("__sys_bpf") {
        Some(id) => try_tracing(BPF_TRACE_FENTRY, id),
        None => Err("no __sys_bpf in BTF".into()),
    };
    let tp_btf = |tp: &str| match btf.tracepoint_id(tp) {
        Some(id) => try_tracing(BPF_TRACE_RAW_TP, id),
        None => Err(format!("no btf_trace_{tp} in BTF")),
    };
    let tp_btf_sock_state = tp_btf("inet_sock_set_state");
    let tp_btf_retransmit = tp_btf("tcp_retransmit_skb").and_then(|()| {
        match btf.tracepoint_args("tcp_retransmit_skb") {
            Some(n) if n >= 3 => tp_btf("tcp_retransmit_synack"),
            n => Err(format!(
                "tcp_retransmit_skb passes {n:?} arguments: no err (6.13+)"
            )),
        }
    });
    Kernel {
        release,
        version,
        fentry,
        kprobe: kprobe_pmu(),
        tp_btf_sock_state,
        tp_btf_retransmit,
        sum_elem_count: btf.has_func("bpf_map_sum_elem_count"),
    }
}

fn kprobe_pmu() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// One link of a probe's attach chain: the mode edgewatch reports and the
/// `--attach.disable` value that turns it off (none for tracepoints, the
/// last resort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub mode: &'static str,
    pub disable: Option<&'static str>,
}

const FENTRY: Link = Link {
    mode: "fentry",
    disable: Some("fentry"),
};
const KPROBE: Link = Link {
    mode: "kprobe",
    disable: Some("kprobe"),
};
const TP_BTF: Link = Link {
    mode: "tp_btf",
    disable: Some("tp_btf"),
};
const TRACEPOINT: Link = Link {
    mode: "tracepoint",
    disable: None,
};

impl Kernel {
    /// The map probe's chain with whether this kernel takes each link.
    pub fn map_chain(&self) -> Vec<(Link, Result<(), String>)> {
        vec![
            (FENTRY, self.fentry.clone()),
            (
                KPROBE,
                if self.kprobe {
                    Ok(())
                } else {
                    Err("no kprobe PMU".into())
                },
            ),
            (TRACEPOINT, Ok(())),
        ]
    }

    pub fn connect_chain(&self) -> Vec<(Link, Result<(), String>)> {
        vec![
            (TP_BTF, self.tp_btf_sock_state.clone()),
            (TRACEPOINT, Ok(())),
        ]
    }

    pub fn retransmit_chain(&self) -> Vec<(Link, Result<(), String>)> {
        vec![
            (TP_BTF, self.tp_btf_retransmit.clone()),
            (TRACEPOINT, Ok(())),
        ]
    }

    pub fn map_mode(&self) -> &'static str {
        first_taken(&self.map_chain())
    }

    pub fn connect_mode(&self) -> &'static str {
        first_taken(&self.connect_chain())
    }

    pub fn retransmit_mode(&self) -> &'static str {
        first_taken(&self.retransmit_chain())
    }
}

fn first_taken(chain: &[(Link, Result<(), String>)]) -> &'static str {
    chain
        .iter()
        .find(|(_, ok)| ok.is_ok())
        .map(|(l, _)| l.mode)
        .unwrap_or("tracepoint")
}

/// The links of `chain` this kernel takes, each with the edgewatch
/// arguments that make the chain land on it: none for the first one taken
/// (the default must pick it), `--attach.disable=<every earlier link>` for
/// the others. Prints the links it leaves out and why.
pub fn links_to_test(
    probe: &str,
    chain: &[(Link, Result<(), String>)],
) -> Vec<(Link, Vec<String>)> {
    let mut out = Vec::new();
    let mut earlier: Vec<&str> = Vec::new();
    for (link, ok) in chain {
        match ok {
            Ok(()) => {
                let args = if out.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("--attach.disable={}", earlier.join(","))]
                };
                out.push((*link, args));
            }
            Err(why) => eprintln!(
                "{probe}: link {} not taken by this kernel ({why}); the chain must pass over it",
                link.mode
            ),
        }
        if let Some(d) = link.disable {
            earlier.push(d);
        }
    }
    out
}
