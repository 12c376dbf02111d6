//! Hand-built Ethernet frames for running the XDP program through
//! BPF_PROG_TEST_RUN.

#![allow(dead_code, reason = "each test binary uses a different part")]

/// An Ethernet frame: optional VLAN tags, then `ethertype` and `payload`.
pub fn ether(vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() == 2 {
            0x88a8
        } else {
            0x8100
        };
        f.extend(tpid.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// An IPv4 header (no options) from `src` carrying `proto` and `len` bytes.
pub fn ipv4(src: [u8; 4], proto: u8, len: usize) -> Vec<u8> {
    let total = (20 + len) as u16;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
    h.extend(src);
    h.extend([10, 99, 0, 2]);
    h.extend(std::iter::repeat_n(0u8, len));
    h
}

/// An IPv6 header from `src` with next header `nh` and `len` bytes.
pub fn ipv6(src: [u8; 16], nh: u8, len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((len as u16).to_be_bytes());
    h.extend([nh, 64]);
    h.extend(src);
    h.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend(std::iter::repeat_n(0u8, len));
    h
}
