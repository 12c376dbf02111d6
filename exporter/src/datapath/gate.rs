//! The XDP blocklist's exact pre-filter (exporter-ebpf/src/xdp.bpf.c,
//! `ew_gate_v4` and `ew_gate_v6`): 2 bits per block of source addresses
//! (IPv4 /24, IPv6 /16), computed here from the same prefix set that goes
//! into the LPM tries.
//!
//! - `GATE_ALL`: a prefix at most as long as the block covers it whole, so
//!   every address in the block is blocked and the program drops without a
//!   trie lookup.
//! - `GATE_SOME`: a longer prefix lies inside the block, so the trie
//!   decides.
//! - neither: nothing in the block is blocked, and the program passes
//!   without a trie lookup, which is what most packets see.
//!
//! Exact by construction: an address is in a blocklist prefix if and only if
//! its block is ALL, or it is SOME and the trie matches. Pure code, no
//! kernel: the words are written by whoever owns the maps ([`write_diff`]).

use edgewatch_common::{
    GATE_ALL, GATE_BLOCKS_PER_WORD, GATE_SOME, GATE_V4_BITS, GATE_V4_WORDS, GATE_V6_BITS,
    GATE_V6_WORDS,
};
use ipnet::IpNet;

/// One family's gate: block size and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Address bits of the family (32 or 128).
    width: u32,
    /// Leading address bits that name a block.
    bits: u32,
    pub words: Vec<u64>,
}

impl Gate {
    pub fn v4() -> Self {
        Self {
            width: 32,
            bits: GATE_V4_BITS,
            words: vec![0; GATE_V4_WORDS as usize],
        }
    }

    pub fn v6() -> Self {
        Self {
            width: 128,
            bits: GATE_V6_BITS,
            words: vec![0; GATE_V6_WORDS as usize],
        }
    }

    /// The IPv4 and IPv6 gates of a prefix set.
    pub fn build<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> (Self, Self) {
        let (mut v4, mut v6) = (Self::v4(), Self::v6());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.add(
                    u128::from(u32::from(n.network())),
                    u32::from(n.prefix_len()),
                ),
                IpNet::V6(n) => v6.add(u128::from(n.network()), u32::from(n.prefix_len())),
            }
        }
        (v4, v6)
    }

    fn mark(&mut self, block: u64, state: u64) {
        let per = u64::from(GATE_BLOCKS_PER_WORD);
        let word = (block / per) as usize;
        self.words[word] |= state << ((block % per) * 2);
    }

    /// Adds the prefix `addr/len` (`addr` right-aligned in `width` bits).
    fn add(&mut self, addr: u128, len: u32) {
        let block = (addr >> (self.width - self.bits)) as u64;
        if len > self.bits {
            self.mark(block, GATE_SOME);
            return;
        }
        // The prefix covers 2^(bits - len) whole blocks from its first one.
        let span = 1u64 << (self.bits - len);
        let first = block & !(span - 1);
        for b in first..first + span {
            self.mark(b, GATE_ALL);
        }
    }

    /// The 2 bits of the block holding `addr` (right-aligned).
    #[cfg(test)]
    pub fn state(&self, addr: u128) -> u64 {
        let block = (addr >> (self.width - self.bits)) as u64;
        let per = u64::from(GATE_BLOCKS_PER_WORD);
        (self.words[(block / per) as usize] >> ((block % per) * 2)) & 3
    }
}

/// Writes the words of `new` that differ from `old` through `set(index,
/// word)`; returns how many were written. Stops at the first error.
pub fn write_diff<E>(
    old: &Gate,
    new: &Gate,
    mut set: impl FnMut(u32, u64) -> Result<(), E>,
) -> Result<usize, E> {
    let mut n = 0;
    for (i, (a, b)) in old.words.iter().zip(&new.words).enumerate() {
        if a != b {
            set(i as u32, *b)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The gate maps of a loaded XDP object and the words last written to them.
pub struct GateMaps {
    v4: aya::maps::Array<aya::maps::MapData, u64>,
    v6: aya::maps::Array<aya::maps::MapData, u64>,
    written: (Gate, Gate),
}

impl GateMaps {
    /// Takes `ew_gate_v4` and `ew_gate_v6` from the object; both start
    /// zeroed (nothing blocked), as the kernel creates arrays.
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Self, (&'static str, aya::maps::MapError)> {
        let mut take = |name: &'static str| {
            let map = bpf
                .take_map(name)
                .ok_or((name, aya::maps::MapError::InvalidName { name: name.into() }))?;
            aya::maps::Array::try_from(map).map_err(|e| (name, e))
        };
        Ok(Self {
            v4: take("ew_gate_v4")?,
            v6: take("ew_gate_v6")?,
            written: (Gate::v4(), Gate::v6()),
        })
    }

    /// Makes the gates describe `nets`, the set the tries hold, writing only
    /// changed words. Returns how many were written.
    pub fn sync<'a>(
        &mut self,
        nets: impl IntoIterator<Item = &'a IpNet>,
    ) -> Result<usize, aya::maps::MapError> {
        let (g4, g6) = Gate::build(nets);
        let v4 = &mut self.v4;
        let n4 = write_diff(&self.written.0, &g4, |i, w| v4.set(i, w, 0))?;
        self.written.0 = g4;
        let v6 = &mut self.v6;
        let n6 = write_diff(&self.written.1, &g6, |i, w| v6.set(i, w, 0))?;
        self.written.1 = g6;
        Ok(n4 + n6)
    }
}

/// Fills `ew_xdp_ifcache`, the inlined array in front of the ifindex-to-slot
/// hash: each interface's (ifindex, slot) at `ifindex % XDP_IFCACHE`, the
/// first one wins a shared entry (the others stay in the hash only).
pub fn fill_ifcache(
    bpf: &mut aya::Ebpf,
    interfaces: &[(String, u32)],
) -> Result<(), (&'static str, aya::maps::MapError)> {
    const NAME: &str = "ew_xdp_ifcache";
    let map = bpf
        .map_mut(NAME)
        .ok_or((NAME, aya::maps::MapError::InvalidName { name: NAME.into() }))?;
    let mut cache: aya::maps::Array<&mut aya::maps::MapData, [u32; 2]> =
        aya::maps::Array::try_from(map).map_err(|e| (NAME, e))?;
    for (i, (index, slot)) in ifcache_entries(interfaces) {
        cache.set(i, [index, slot], 0).map_err(|e| (NAME, e))?;
    }
    Ok(())
}

/// (array index, (ifindex, slot)) for each interface that gets an entry.
pub fn ifcache_entries(interfaces: &[(String, u32)]) -> Vec<(u32, (u32, u32))> {
    let mut taken = std::collections::BTreeMap::new();
    for (slot, (_, ifindex)) in interfaces.iter().enumerate() {
        taken
            .entry(ifindex % edgewatch_common::XDP_IFCACHE)
            .or_insert((*ifindex, slot as u32));
    }
    taken.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn v4(a: [u8; 4]) -> u128 {
        u128::from(u32::from(Ipv4Addr::from(a)))
    }

    /// Is `addr` in any of `nets`: the tries' answer.
    fn blocked(nets: &[IpNet], addr: IpAddr) -> bool {
        nets.iter().any(|n| n.contains(&addr))
    }

    /// The program's decision: ALL drops, SOME asks the trie, else pass.
    fn gate_says(g4: &Gate, g6: &Gate, nets: &[IpNet], addr: IpAddr) -> bool {
        let state = match addr {
            IpAddr::V4(a) => g4.state(u128::from(u32::from(a))),
            IpAddr::V6(a) => g6.state(u128::from(a)),
        };
        state & GATE_ALL != 0 || (state & GATE_SOME != 0 && blocked(nets, addr))
    }

    #[test]
    fn short_prefixes_fill_whole_blocks_and_long_ones_defer_to_the_trie() {
        let list = nets(&[
            "10.0.0.0/8",
            "192.0.2.0/24",
            "198.51.100.7/32",
            "2001:db8::/32",
        ]);
        let (g4, g6) = Gate::build(&list);
        assert_eq!(g4.state(v4([10, 200, 3, 4])), GATE_ALL);
        assert_eq!(g4.state(v4([192, 0, 2, 99])), GATE_ALL);
        assert_eq!(g4.state(v4([192, 0, 3, 99])), 0);
        assert_eq!(g4.state(v4([198, 51, 100, 8])), GATE_SOME);
        assert_eq!(g4.state(v4([11, 0, 0, 0])), 0);
        let a: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        assert_eq!(g6.state(u128::from(a)), GATE_SOME);
        let b: Ipv6Addr = "2002::1".parse().unwrap();
        assert_eq!(g6.state(u128::from(b)), 0);
        // A /8 sets 2^16 blocks; nothing else in the same words moved.
        let all: u32 = g4.words.iter().map(|w| w.count_ones()).sum();
        assert_eq!(all, (1 << 16) + 1 + 1);
    }

    #[test]
    fn host_bits_in_a_prefix_do_not_move_it() {
        let (a, _) = Gate::build(&nets(&["10.1.2.3/16"]));
        let (b, _) = Gate::build(&nets(&["10.1.0.0/16"]));
        assert_eq!(a, b);
    }

    /// The gate and the trie together decide exactly as the trie alone, for
    /// addresses at and around every prefix boundary and random ones.
    #[test]
    fn gate_plus_trie_equals_trie_alone() {
        let list = nets(&[
            "0.0.0.0/1",
            "203.0.113.0/24",
            "203.0.113.128/25",
            "198.51.100.7/32",
            "198.51.100.64/26",
            "100.64.0.0/10",
            "2001:db8::/32",
            "2001:db8:ffff::/48",
            "::1/128",
            "fe80::/10",
        ]);
        let (g4, g6) = Gate::build(&list);
        let mut probes: Vec<IpAddr> = Vec::new();
        for n in &list {
            for a in [n.network(), n.broadcast()] {
                probes.push(a);
                match a {
                    IpAddr::V4(x) => {
                        let x = u32::from(x);
                        probes.push(IpAddr::V4(x.wrapping_add(1).into()));
                        probes.push(IpAddr::V4(x.wrapping_sub(1).into()));
                    }
                    IpAddr::V6(x) => {
                        let x = u128::from(x);
                        probes.push(IpAddr::V6(x.wrapping_add(1).into()));
                        probes.push(IpAddr::V6(x.wrapping_sub(1).into()));
                    }
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probes.push(IpAddr::V4(Ipv4Addr::from(x as u32)));
            probes.push(IpAddr::V6(Ipv6Addr::from(
                (u128::from(x) << 64 | u128::from(x.rotate_left(17))) ^ (0x2001_0db8 << 96),
            )));
        }
        for a in probes {
            assert_eq!(
                gate_says(&g4, &g6, &list, a),
                blocked(&list, a),
                "{a} (gate {})",
                match a {
                    IpAddr::V4(v) => g4.state(u128::from(u32::from(v))),
                    IpAddr::V6(v) => g6.state(u128::from(v)),
                }
            );
        }
    }

    #[test]
    fn ifcache_keeps_the_first_of_colliding_interfaces() {
        let ifs = [
            ("a".to_string(), 3),
            ("b".to_string(), 259),
            ("c".to_string(), 4),
        ];
        assert_eq!(ifcache_entries(&ifs), vec![(3, (3, 0)), (4, (4, 2))]);
    }

    #[test]
    fn only_changed_words_are_written() {
        let (old, _) = Gate::build(&nets(&["192.0.2.0/24"]));
        let (new, _) = Gate::build(&nets(&["192.0.2.0/24", "10.0.0.0/23"]));
        let mut written = Vec::new();
        let n = write_diff(&old, &new, |i, w| {
            written.push((i, w));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(written, vec![(10 << 11, 0b0101)]);
        let (empty, _) = Gate::build(&[]);
        assert_eq!(write_diff(&new, &new, |_, _| Err(())), Ok(0));
        assert_eq!(write_diff(&empty, &new, |_, _| Err("full")), Err("full"));
    }
}
