//! Ring-buffer record decoding: bytes in, typed records out. Pure code: a
//! truncated, oversized or unknown record is an error value for the caller to
//! count, never a panic.

use edgewatch_common::{Header, Record};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {min}-byte header")]
    Truncated { len: usize, min: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("record kind {kind}: {got} bytes (header says {declared}), expected {expected}")]
    Size {
        kind: u16,
        expected: usize,
        got: usize,
        declared: u16,
    },
}

/// Reads the common header of a record.
pub fn header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let min = size_of::<Header>();
    match bytes.get(..min) {
        Some(h) => Ok(bytemuck::pod_read_unaligned(h)),
        None => Err(DecodeError::Truncated {
            len: bytes.len(),
            min,
        }),
    }
}

/// Reads a whole record of type `R`: its length and the header's `size`
/// must both be exactly `size_of::<R>()`.
pub fn record<R: Record>(bytes: &[u8]) -> Result<R, DecodeError> {
    let hdr = header(bytes)?;
    let expected = size_of::<R>();
    if bytes.len() != expected || usize::from(hdr.size) != expected {
        return Err(DecodeError::Size {
            kind: hdr.kind,
            expected,
            got: bytes.len(),
            declared: hdr.size,
        });
    }
    Ok(bytemuck::pod_read_unaligned(bytes))
}

#[cfg(test)]
mod tests {
    use edgewatch_common::{ConnectCall, KIND_CONNECT_CALL};

    use super::*;

    fn call_bytes() -> Vec<u8> {
        let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
        c.hdr.kind = KIND_CONNECT_CALL;
        c.hdr.size = size_of::<ConnectCall>() as u16;
        c.ret = -111;
        c.family = 2;
        c.comm[..4].copy_from_slice(b"curl");
        bytemuck::bytes_of(&c).to_vec()
    }

    #[test]
    fn decodes_a_record() {
        let c: ConnectCall = record(&call_bytes()).unwrap();
        assert_eq!(c.ret, -111);
        assert_eq!(edgewatch_common::comm_str(&c.comm), b"curl");
    }

    #[test]
    fn decodes_unaligned_input() {
        let mut buf = vec![0u8];
        buf.extend(call_bytes());
        let c: ConnectCall = record(&buf[1..]).unwrap();
        assert_eq!(c.family, 2);
    }

    #[test]
    fn truncated_and_garbage_records_are_errors() {
        let b = call_bytes();
        assert_eq!(
            header(&b[..3]),
            Err(DecodeError::Truncated { len: 3, min: 16 })
        );
        assert_eq!(
            record::<ConnectCall>(&[]).unwrap_err(),
            DecodeError::Truncated { len: 0, min: 16 }
        );
        assert!(matches!(
            record::<ConnectCall>(&b[..40]),
            Err(DecodeError::Size { got: 40, .. })
        ));
        let mut long = b.clone();
        long.extend([0; 8]);
        let got = size_of::<ConnectCall>() + 8;
        assert!(matches!(
            record::<ConnectCall>(&long),
            Err(DecodeError::Size { got: g, .. }) if g == got
        ));
        // Right length, lying header.
        let mut lying = b;
        lying[2] = 99;
        assert!(matches!(
            record::<ConnectCall>(&lying),
            Err(DecodeError::Size { declared: 99, .. })
        ));
        // Random bytes of every length never panic.
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = header(&garbage);
            let _ = record::<ConnectCall>(&garbage);
        }
    }
}
