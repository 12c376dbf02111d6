//! The consumer side of the BPF ring buffer, mapped and read as libbpf and
//! aya read it (kernel/bpf/ringbuf.c's layout: a consumer page the reader
//! writes, then the producer page and the data pages, mapped twice so a
//! record that wraps reads as one piece), with one difference: the
//! consumer position goes back to the kernel once per `publish_every`
//! bytes read and at the end of a drain, not after every record.
//!
//! Every producer reads the consumer position on every reserve (and
//! edgewatch's submit policy reads it again to decide on a wake-up), and the
//! reader wrote it after every record: the line moved between the CPUs twice
//! per record, on both sides (aya's `RingBuf` and libbpf both store per
//! record; aya 0.14 offers no batch). Space is given back later by less than
//! `publish_every` bytes, a sixteenth of the ring at most; whatever cannot be
//! reserved meanwhile is counted lost as before, so delivered + lost =
//! generated still holds exactly.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

/// `BPF_RINGBUF_BUSY_BIT`: the record is reserved, not yet committed.
const BUSY: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: the producer discarded the record.
const DISCARD: u32 = 1 << 30;
/// `BPF_RINGBUF_HDR_SZ`.
const HEADER: u64 = 8;
/// How far ahead of the record being read its next lines are fetched.
const PREFETCH: usize = 512;

/// One shared mapping of the ring buffer's fd, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, offset: usize, prot: libc::c_int) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of the ring buffer's fd; nothing
        // else refers to the address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct Reader {
    consumer: Mapping,
    /// The producer page, then the data pages twice.
    producer: Mapping,
    page: usize,
    mask: u64,
    /// Where this reader is.
    pos: u64,
    /// Where the kernel was told it is.
    published: u64,
    /// The last producer position read.
    producer_pos: u64,
    publish_every: u64,
}

// SAFETY: the mappings are owned by the reader and read through atomics
// where the kernel writes concurrently; the reader moves between tokio's
// worker threads but is used by one at a time (`&mut self`).
unsafe impl Send for Reader {}

impl Reader {
    /// Maps the ring buffer `fd` of `size` data bytes (its max_entries, a
    /// power of two).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {size} is not a power of two"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        let consumer = Mapping::new(fd, page, 0, libc::PROT_READ | libc::PROT_WRITE)?;
        let producer = Mapping::new(fd, page + 2 * size, page, libc::PROT_READ)?;
        let mut reader = Self {
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            pos: 0,
            published: 0,
            producer_pos: 0,
            // A sixteenth of the ring, at most 4 KiB (about 32 map
            // records): small against the ring, large against a record.
            publish_every: (size as u64 / 16).min(4 * 1024),
        };
        reader.pos = reader.consumer_pos().load(Ordering::Acquire);
        reader.published = reader.pos;
        reader.producer_pos = reader.pos;
        Ok(reader)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page starts with the kernel's 8-byte aligned
        // consumer position, and the mapping lives as long as `self`.
        unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    fn load_producer_pos(&self) -> u64 {
        // SAFETY: the producer page starts with the kernel's producer
        // position, aligned, for as long as `self` lives.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicU64>() }.load(Ordering::Acquire)
    }

    /// Tells the kernel where the reader is.
    fn publish(&mut self) {
        if self.published != self.pos {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    /// Calls `record` with every committed record, in order, up to the
    /// first one still being written; returns how many.
    pub fn drain(&mut self, mut record: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            if self.pos == self.producer_pos {
                self.producer_pos = self.load_producer_pos();
                if self.pos == self.producer_pos {
                    // Caught up: give the space back, then look once more
                    // (a producer that saw the old position may have
                    // committed since).
                    self.publish();
                    fence(Ordering::SeqCst);
                    self.producer_pos = self.load_producer_pos();
                    if self.pos == self.producer_pos {
                        return n;
                    }
                }
            }
            let offset = self.page + (self.pos & self.mask) as usize;
            // SAFETY: offset is within the first copy of the data pages; the
            // header is 8-byte aligned (records are padded to 8 bytes).
            let header = unsafe { &*self.producer.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
                // Pairs with the kernel's commit (xchg): the record's bytes are
                // visible once the busy bit is clear.
                .load(Ordering::Acquire);
            if header & BUSY != 0 {
                self.publish();
                return n;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; an address past the mapping
            // does not fault. Offsets stay within the double mapping.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                let ahead = self
                    .producer
                    .ptr
                    .as_ptr()
                    .add(offset)
                    .wrapping_add(PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            }
            let len = u64::from(header & !(BUSY | DISCARD));
            if len + HEADER > self.mask + 1 {
                // The kernel never writes this; stop rather than read past
                // the mapping.
                tracing::error!(len, "ring buffer record longer than the ring; not read");
                self.publish();
                return n;
            }
            if header & DISCARD == 0 {
                // SAFETY: the record's bytes follow its header; a record is
                // at most the ring's size, and the data pages are mapped
                // twice, so they are within the mapping.
                let data = unsafe {
                    std::slice::from_raw_parts(
                        self.producer.ptr.as_ptr().add(offset + HEADER as usize),
                        len as usize,
                    )
                };
                record(data);
                n += 1;
            }
            self.pos += (len + HEADER + 7) & !7;
            if self.pos - self.published >= self.publish_every {
                self.publish();
            }
        }
    }
}
