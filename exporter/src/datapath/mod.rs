//! XDP datapath (kernel 5.9+): attaches the XDP program, and keeps the
//! source-prefix blocklist in its LPM tries, reloaded in place on SIGHUP.
//! Its counters are read at scrape time by scrape/xdp.rs. BPF side:
//! exporter-ebpf/src/xdp.bpf.c.
//!
//! Nothing attaches unless the operator names an interface. Attachment is
//! through a BPF link only: a link disappears with the process that holds
//! it, so a killed edgewatch leaves nothing on the interface. aya falls back
//! to a netlink attachment (which would outlive us) where links are
//! unsupported; we refuse that instead.
//!
//! One program serves every interface; `ew_xdp_ifslot` maps an ifindex to
//! its slot in the counters, so the blocklist is one pair of tries however
//! many interfaces there are.

pub mod gate;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{Xdp, XdpMode, links::FdLink},
};
use ipnet::IpNet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::scrape::xdp::{FamilyLabel, IfaceMode, ResultLabel, XdpMetrics};

/// `--xdp.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    Auto,
    Driver,
    Skb,
}

impl ModeChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "driver" => Some(Self::Driver),
            "skb" => Some(Self::Skb),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("attaching XDP to {iface} ({mode}): {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching XDP to {0}: the kernel has no BPF links for XDP (5.9+); refusing a netlink attachment that would outlive edgewatch"
    )]
    NoLink(String),
    #[error("{0}")]
    Blocklist(#[from] BlocklistError),
    #[error("too many XDP interfaces ({0}; at most {1})")]
    TooMany(usize, u32),
}

/// A blocklist file problem, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlocklistError {
    #[error("{path}: {error}")]
    Read { path: String, error: String },
    #[error(
        "{path}: {entries} {family} prefixes, more than the {BLOCKLIST_CAPACITY} the datapath holds per family"
    )]
    TooLarge {
        path: String,
        family: &'static str,
        entries: usize,
    },
    #[error("{path}:{line}: {text:?} is not an address or CIDR prefix")]
    Parse {
        path: String,
        line: usize,
        text: String,
    },
}

/// Prefixes each blocklist trie holds (`max_entries` of `ew_block_v4` and
/// `ew_block_v6` in xdp.bpf.c).
pub const BLOCKLIST_CAPACITY: usize = 262_144;

/// Refuses a list that the tries cannot hold, before anything is written.
pub fn check_capacity(path: &str, list: &BTreeSet<IpNet>) -> Result<(), BlocklistError> {
    let v4 = list.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    let v6 = list.len() - v4;
    for (family, n) in [("IPv4", v4), ("IPv6", v6)] {
        if n > BLOCKLIST_CAPACITY {
            return Err(BlocklistError::TooLarge {
                path: path.to_string(),
                family,
                entries: n,
            });
        }
    }
    Ok(())
}

/// Parses a blocklist: one address or CIDR prefix a line, `#` starts a
/// comment. Host bits are cleared (10.1.2.3/8 is 10.0.0.0/8). Any malformed
/// line rejects the whole file.
pub fn parse_blocklist(path: &str, text: &str) -> Result<BTreeSet<IpNet>, BlocklistError> {
    let mut out = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let net = match line.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match line.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    return Err(BlocklistError::Parse {
                        path: path.to_string(),
                        line: i + 1,
                        text: line.to_string(),
                    });
                }
            },
        };
        out.insert(net);
    }
    Ok(out)
}

/// Reads and parses a blocklist file.
pub fn read_blocklist(path: &Path) -> Result<BTreeSet<IpNet>, BlocklistError> {
    let shown = path.display().to_string();
    let text =
        crate::vocab::bounded::read_to_string(path, crate::vocab::bounded::MAX_BLOCKLIST_BYTES)
            .map_err(|e| BlocklistError::Read {
                path: shown.clone(),
                error: e.to_string(),
            })?;
    parse_blocklist(&shown, &text)
}

/// The blocklist tries and what is in them.
pub struct Blocklist {
    path: Option<PathBuf>,
    v4: LpmTrie<MapData, [u8; 4], u8>,
    v6: LpmTrie<MapData, [u8; 16], u8>,
    gate: gate::GateMaps,
    /// Whether the program consults the blocklist at all: decided at load
    /// (no file at start: it skips it, and the pre-filter is not allocated).
    enabled: bool,
    current: BTreeSet<IpNet>,
    entries: Family<FamilyLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
}

impl Blocklist {
    fn insert(&mut self, net: &IpNet) -> Result<(), aya::maps::MapError> {
        match net {
            IpNet::V4(n) => self.v4.insert(
                &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                1,
                0,
            ),
            IpNet::V6(n) => self.v6.insert(
                &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                1,
                0,
            ),
        }
    }

    fn remove(&mut self, net: &IpNet) -> Result<(), aya::maps::MapError> {
        match net {
            IpNet::V4(n) => self
                .v4
                .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            IpNet::V6(n) => self
                .v6
                .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
        }
    }

    /// Writes only the difference between what is loaded and `wanted`.
    /// Returns (added, removed). On a map error, what was written stays and
    /// `current` says so.
    fn apply(&mut self, wanted: &BTreeSet<IpNet>) -> Result<(usize, usize), String> {
        let remove: Vec<IpNet> = self.current.difference(wanted).copied().collect();
        let add: Vec<IpNet> = wanted.difference(&self.current).copied().collect();
        let tries = self.apply_tries(&remove, &add);
        // The pre-filter follows what the tries hold, also after an error.
        let gate = self
            .gate
            .sync(&self.current)
            .map_err(|e| format!("writing the blocklist pre-filter: {e}"));
        self.update_gauges();
        tries.and(gate)?;
        Ok((add.len(), remove.len()))
    }

    fn apply_tries(&mut self, remove: &[IpNet], add: &[IpNet]) -> Result<(), String> {
        for net in remove {
            self.remove(net)
                .map_err(|e| format!("removing {net}: {e}"))?;
            self.current.remove(net);
        }
        for net in add {
            self.insert(net).map_err(|e| format!("adding {net}: {e}"))?;
            self.current.insert(*net);
        }
        Ok(())
    }

    fn update_gauges(&self) {
        let v4 = self
            .current
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        let v6 = self.current.len() - v4;
        self.entries
            .get_or_create(&FamilyLabel { family: "ipv4" })
            .set(v4 as i64);
        self.entries
            .get_or_create(&FamilyLabel { family: "ipv6" })
            .set(v6 as i64);
    }

    /// The file the list comes from, if any (a config reload may change it).
    /// A datapath loaded without a blocklist skips it in the kernel: a file
    /// configured later takes a restart, which is logged and counted as a
    /// rejected reload.
    pub fn set_path(&mut self, path: Option<PathBuf>) {
        if !self.enabled && path.is_some() {
            self.reloads
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            tracing::error!(
                "xdp.blocklist_file: edgewatch started without a blocklist, so its XDP program skips it; restart to use one"
            );
            return;
        }
        self.path = path;
    }

    /// Re-reads the file; a malformed file is rejected whole and the
    /// running list stays. Without a file (none configured any more), the
    /// tries are emptied.
    pub fn reload(&mut self) {
        let Some(path) = self.path.clone() else {
            if !self.current.is_empty() {
                match self.apply(&BTreeSet::new()) {
                    Ok((_, removed)) => {
                        tracing::info!(removed, "XDP blocklist no longer configured: emptied")
                    }
                    Err(error) => tracing::error!(%error, "emptying the XDP blocklist failed"),
                }
            }
            return;
        };
        let shown = path.display().to_string();
        let result = read_blocklist(&path)
            .and_then(|wanted| check_capacity(&shown, &wanted).map(|()| wanted))
            .map_err(|e| e.to_string())
            .and_then(|wanted| self.apply(&wanted));
        match result {
            Ok((added, removed)) => {
                self.reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(
                    added,
                    removed,
                    entries = self.current.len(),
                    "XDP blocklist reloaded"
                );
            }
            Err(error) => {
                self.reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::error!(%error, entries = self.current.len(), "XDP blocklist reload rejected; the running list stays");
            }
        }
    }
}

/// The attached datapath. Dropping it detaches everything.
pub struct Datapath {
    /// The blocklist tries (empty unless a file is configured).
    pub blocklist: Blocklist,
    /// (interface, mode) as attached.
    pub attached: Vec<(String, &'static str)>,
    /// The per-CPU counters, until the scrape-time collector takes them.
    pub stats: Option<PerCpuArray<MapData, [u64; 2]>>,
    _links: Vec<FdLink>,
    _bpf: Ebpf,
}

fn take<T>(
    bpf: &mut Ebpf,
    name: &'static str,
    f: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, XdpError> {
    let map = bpf.take_map(name).ok_or(XdpError::MissingMap(name))?;
    f(map).map_err(|e| XdpError::Map(name, e))
}

/// Attaches the datapath to `interfaces` ((name, ifindex)), keeping its
/// gauges in `metrics`, and loads the blocklist if one is configured.
pub fn start(
    interfaces: &[(String, u32)],
    mode: ModeChoice,
    blocklist: Option<(&Path, &BTreeSet<IpNet>)>,
    metrics: &XdpMetrics,
) -> Result<Datapath, XdpError> {
    if interfaces.len() > edgewatch_common::XDP_MAX_IFACES as usize {
        return Err(XdpError::TooMany(
            interfaces.len(),
            edgewatch_common::XDP_MAX_IFACES,
        ));
    }
    // Without a blocklist nothing can be blocked: the program skips the
    // pre-filter and the tries, and the pre-filter's 4 MiB are not allocated.
    let blocklist_mode = if blocklist.is_some() {
        edgewatch_common::BLOCKLIST_GATE
    } else {
        edgewatch_common::BLOCKLIST_OFF
    };
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("ew_blocklist_mode", &blocklist_mode, true);
    if blocklist.is_none() {
        loader.map_max_entries("ew_gate_v4", 1);
        loader.map_max_entries("ew_gate_v6", 1);
    }
    let mut bpf = loader.load(edgewatch_ebpf::xdp())?;
    let attached = metrics.attached.clone();

    let mut slots: BpfHashMap<MapData, u32, u32> =
        take(&mut bpf, "ew_xdp_ifslot", BpfHashMap::try_from)?;
    for (slot, (_, ifindex)) in interfaces.iter().enumerate() {
        slots
            .insert(ifindex, slot as u32, 0)
            .map_err(|e| XdpError::Map("ew_xdp_ifslot", e))?;
    }
    gate::fill_ifcache(&mut bpf, interfaces).map_err(|(name, e)| XdpError::Map(name, e))?;
    let gate = gate::GateMaps::take(&mut bpf).map_err(|(name, e)| XdpError::Map(name, e))?;
    let stats: PerCpuArray<MapData, [u64; 2]> =
        take(&mut bpf, "ew_xdp_stats", PerCpuArray::try_from)?;
    let v4 = take(&mut bpf, "ew_block_v4", LpmTrie::try_from)?;
    let v6 = take(&mut bpf, "ew_block_v6", LpmTrie::try_from)?;

    let prog: &mut Xdp = bpf
        .program_mut("ew_xdp")
        .ok_or(XdpError::Program(aya::programs::ProgramError::NotLoaded))?
        .try_into()?;
    prog.load()?;
    let tries: &[(XdpMode, &'static str)] = match mode {
        ModeChoice::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "skb")],
        ModeChoice::Driver => &[(XdpMode::Driver, "driver")],
        ModeChoice::Skb => &[(XdpMode::Skb, "skb")],
    };
    let mut links = Vec::new();
    let mut modes = Vec::new();
    for (name, ifindex) in interfaces {
        let mut last = None;
        let mut done = None;
        for (m, label) in tries {
            match prog.attach_to_if_index(*ifindex, *m) {
                Ok(id) => {
                    done = Some((id, *label));
                    break;
                }
                Err(e) => {
                    tracing::info!(interface = %name, mode = label, error = %e, "XDP attach failed in this mode");
                    last = Some((*label, e));
                }
            }
        }
        let Some((id, label)) = done else {
            let (mode, source) = last.unwrap_or(("none", aya::programs::ProgramError::NotLoaded));
            return Err(XdpError::Attach {
                iface: name.clone(),
                mode,
                source,
            });
        };
        let link = prog.take_link(id)?;
        let fd: FdLink = link
            .try_into()
            .map_err(|_| XdpError::NoLink(name.clone()))?;
        attached
            .get_or_create(&IfaceMode {
                interface: name.clone(),
                mode: label,
            })
            .set(1);
        tracing::info!(interface = %name, mode = label, "XDP attached");
        links.push(fd);
        modes.push((name.clone(), label));
    }

    let mut list = Blocklist {
        path: None,
        v4,
        v6,
        gate,
        enabled: blocklist.is_some(),
        current: BTreeSet::new(),
        entries: metrics.entries.clone(),
        reloads: metrics.reloads.clone(),
    };
    list.update_gauges();
    if let Some((path, wanted)) = blocklist {
        list.path = Some(path.to_path_buf());
        list.apply(wanted).map_err(|e| {
            XdpError::Blocklist(BlocklistError::Read {
                path: path.display().to_string(),
                error: e,
            })
        })?;
    }
    Ok(Datapath {
        blocklist: list,
        attached: modes,
        stats: Some(stats),
        _links: links,
        _bpf: bpf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_comments_and_bare_addresses() {
        let text =
            "# blocklist\n10.1.2.3/8  # host bits cleared\n\n192.0.2.7\n2001:db8::/32\n::1\n";
        let got = parse_blocklist("f", text).unwrap();
        let want: BTreeSet<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_malformed_line_rejects_the_file_with_its_number() {
        let err = parse_blocklist("list.txt", "10.0.0.0/8\n\n300.1.1.1/8\n").unwrap_err();
        assert_eq!(
            err,
            BlocklistError::Parse {
                path: "list.txt".into(),
                line: 3,
                text: "300.1.1.1/8".into()
            }
        );
        assert!(err.to_string().starts_with("list.txt:3: "));
        assert!(parse_blocklist("f", "10.0.0.0/33").is_err());
    }
}
