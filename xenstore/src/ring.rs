//! The shared xenstore ring page (`struct xenstore_domain_interface`) and its index
//! arithmetic.
//!
//! The page holds two 1024-byte byte queues, `req` (to xenstored) and `rsp` (to us),
//! each with free-running u32 consumer and producer indexes that wrap at 2^32; byte `i`
//! of a stream lives at `req[i & 1023]`. The peer writes its indexes whenever it likes,
//! so they are checked before use: a producer more than a ringful ahead of its consumer
//! is a corrupt ring, reported as an error. The kernel does the volatile copies; this
//! module says how many bytes and where.

use core::ops::Range;

/// `XENSTORE_RING_SIZE`: bytes in each direction's queue.
pub const RING_SIZE: usize = 1024;

/// `struct xenstore_domain_interface`, for its size and offsets; the page is shared
/// memory and is only ever accessed field by field at these offsets.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DomainInterface {
    pub req: [u8; RING_SIZE],
    pub rsp: [u8; RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    pub server_features: u32,
    pub connection: u32,
    pub error: u32,
}

pub const REQ_OFFSET: usize = 0;
pub const RSP_OFFSET: usize = RING_SIZE;
pub const REQ_CONS_OFFSET: usize = 2 * RING_SIZE;
pub const REQ_PROD_OFFSET: usize = REQ_CONS_OFFSET + 4;
pub const RSP_CONS_OFFSET: usize = REQ_CONS_OFFSET + 8;
pub const RSP_PROD_OFFSET: usize = REQ_CONS_OFFSET + 12;
pub const SERVER_FEATURES_OFFSET: usize = REQ_CONS_OFFSET + 16;
pub const CONNECTION_OFFSET: usize = REQ_CONS_OFFSET + 20;
pub const ERROR_OFFSET: usize = REQ_CONS_OFFSET + 24;

/// `server_features` bits.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
pub const SERVER_FEATURE_ERROR: u32 = 2;

/// `connection` values.
pub const CONNECTED: u32 = 0;
pub const RECONNECT: u32 = 1;

/// `error` values (new ones may appear; treat any non-zero as fatal).
pub const ERROR_NONE: u32 = 0;
pub const ERROR_COMM: u32 = 1;
pub const ERROR_RINGIDX: u32 = 2;
pub const ERROR_PROTO: u32 = 3;

/// The indexes claim more than a ringful of unread bytes: the peer corrupted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the indexes claim more than a ringful of unread bytes (cons {cons}, prod {prod})")]
pub struct CorruptRing {
    pub cons: u32,
    pub prod: u32,
}

/// The slot of a free-running index in a queue.
pub fn slot(index: u32) -> usize {
    index as usize & (RING_SIZE - 1)
}

/// Bytes produced and not yet consumed.
pub fn readable(cons: u32, prod: u32) -> Result<usize, CorruptRing> {
    let unread = prod.wrapping_sub(cons) as usize;
    if unread > RING_SIZE {
        return Err(CorruptRing { cons, prod });
    }
    Ok(unread)
}

/// Bytes the producer may write before it reaches unconsumed data.
pub fn free_space(cons: u32, prod: u32) -> Result<usize, CorruptRing> {
    Ok(RING_SIZE - readable(cons, prod)?)
}

/// Where `len` bytes starting at stream index `start` lie in a queue: a range up to the
/// end of the array and a range from its start (empty unless the copy wraps). `len` is
/// capped at [`RING_SIZE`].
pub fn chunks(start: u32, len: usize) -> [Range<usize>; 2] {
    let first = slot(start);
    let len = len.min(RING_SIZE);
    let until_end = RING_SIZE - first;
    if len <= until_end { [first..first + len, 0..0] } else { [first..RING_SIZE, 0..len - until_end] }
}

/// One queue in ordinary memory, for tests and simulations; it uses the same
/// arithmetic as the kernel does on the shared page.
#[derive(Clone, Debug)]
pub struct Ring {
    pub data: [u8; RING_SIZE],
    pub cons: u32,
    pub prod: u32,
}

impl Default for Ring {
    fn default() -> Ring {
        Ring::starting_at(0)
    }
}

impl Ring {
    /// An empty queue whose indexes start at `index` (peers must not assume 0).
    pub fn starting_at(index: u32) -> Ring {
        Ring { data: [0; RING_SIZE], cons: index, prod: index }
    }

    /// Writes as much of `bytes` as fits and returns how much that was.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, CorruptRing> {
        let count = bytes.len().min(free_space(self.cons, self.prod)?);
        let mut source = &bytes[..count];
        for range in chunks(self.prod, count) {
            let (now, later) = source.split_at(range.len());
            self.data[range].copy_from_slice(now);
            source = later;
        }
        self.prod = self.prod.wrapping_add(count as u32);
        Ok(count)
    }

    /// Reads up to `out.len()` bytes and returns how many it read.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, CorruptRing> {
        let count = out.len().min(readable(self.cons, self.prod)?);
        let mut target = &mut out[..count];
        for range in chunks(self.cons, count) {
            let (now, later) = target.split_at_mut(range.len());
            now.copy_from_slice(&self.data[range]);
            target = later;
        }
        self.cons = self.cons.wrapping_add(count as u32);
        Ok(count)
    }

    pub fn readable(&self) -> Result<usize, CorruptRing> {
        readable(self.cons, self.prod)
    }

    pub fn free_space(&self) -> Result<usize, CorruptRing> {
        free_space(self.cons, self.prod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::Decoder;
    use crate::wire;
    use alloc::vec::Vec;

    #[test]
    fn arithmetic_near_u32_max() {
        assert_eq!(readable(u32::MAX - 9, 5), Ok(15));
        assert_eq!(free_space(u32::MAX - 9, 5), Ok(RING_SIZE - 15));
        assert_eq!(readable(u32::MAX, u32::MAX), Ok(0));
        assert_eq!(free_space(u32::MAX - 1023, u32::MAX), Ok(1));
        assert_eq!(readable(u32::MAX - 1023, 0), Ok(RING_SIZE));
        assert_eq!(free_space(u32::MAX - 1023, 0), Ok(0));
        assert_eq!(readable(u32::MAX - 100, 923), Ok(RING_SIZE));
        assert_eq!(slot(u32::MAX), 1023);
        assert_eq!(slot(1024 + 7), 7);
    }

    #[test]
    fn corrupt_indexes_are_errors() {
        // Producer more than a ringful ahead, or behind its consumer.
        assert_eq!(readable(0, 1025), Err(CorruptRing { cons: 0, prod: 1025 }));
        assert_eq!(free_space(100, 50), Err(CorruptRing { cons: 100, prod: 50 }));
        let cons = u32::MAX - 100;
        assert_eq!(free_space(cons, 924), Err(CorruptRing { cons, prod: 924 }));
        let mut ring = Ring::starting_at(10);
        ring.prod = 5000;
        assert!(ring.write(b"x").is_err());
        assert!(ring.read(&mut [0; 4]).is_err());
    }

    #[test]
    fn chunks_split_only_when_wrapping() {
        assert_eq!(chunks(0, 10), [0..10, 0..0]);
        assert_eq!(chunks(1020, 4), [1020..1024, 0..0]);
        assert_eq!(chunks(1020, 10), [1020..1024, 0..6]);
        assert_eq!(chunks(u32::MAX, 3), [1023..1024, 0..2]);
        assert_eq!(chunks(5, 0), [5..5, 0..0]);
        assert_eq!(chunks(1000, 5000), [1000..1024, 0..1000], "capped at a ringful");
    }

    #[test]
    fn ring_round_trip_across_index_wrap() {
        let mut ring = Ring::starting_at(u32::MAX - 500);
        let message = wire::write(1, 0, "/a", &[b'v'; 900]).unwrap();
        let stream = message.repeat(3);
        let mut decoder = Decoder::new();
        let (mut sent, mut received) = (0, Vec::new());
        // Producer and consumer alternate in uneven steps, crossing 2^32 and the array end.
        for _ in 0..100 {
            let end = stream.len().min(sent + 350);
            sent += ring.write(&stream[sent..end]).unwrap();
            let mut buffer = [0; 300];
            let count = ring.read(&mut buffer).unwrap();
            received.extend(decoder.feed(&buffer[..count]));
        }
        assert_eq!(sent, stream.len());
        assert_eq!(received.len(), 3);
        for received_message in received {
            assert_eq!(received_message.unwrap().payload, message[16..]);
        }
        assert!(ring.cons < 10_000, "the indexes wrapped");
    }

    #[test]
    fn full_ring_takes_nothing_more() {
        let mut ring = Ring::starting_at(0);
        assert_eq!(ring.write(&[1; 2000]), Ok(RING_SIZE));
        assert_eq!(ring.write(&[1; 10]), Ok(0));
        assert_eq!(ring.free_space(), Ok(0));
        assert_eq!(ring.read(&mut [0; 24]), Ok(24));
        assert_eq!(ring.write(&[2; 100]), Ok(24));
        assert_eq!(ring.readable(), Ok(RING_SIZE));
    }
}
