//! The Ethernet CRC-32 two ways: the frame check sequence the card appends to each
//! received frame in the ring (what Linux strips, or keeps with `NETIF_F_RXFCS`), and
//! the 6-bit multicast hash that indexes MAR0-7, computed as Linux's 8139too computes it
//! (`ether_crc(ETH_ALEN, addr) >> 26`, where `ether_crc` is the bit-reversed
//! `crc32_le(~0, ...)` without the final inversion).

/// The reflected IEEE 802.3 polynomial.
const POLYNOMIAL_REFLECTED: u32 = 0xedb8_8320;

/// Slicing-by-8 tables: `TABLES[0][b]` is the CRC of byte `b`, and `TABLES[k][b]` that
/// of `b` followed by `k` zero bytes, so that eight bytes take eight independent lookups
/// (8 KiB of tables, several times faster than a byte at a time).
static TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLYNOMIAL_REFLECTED } else { crc >> 1 };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let previous = tables[k - 1][i];
            tables[k][i] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};

/// `crc32_le(crc, bytes)`: the running CRC, no inversions.
fn update(mut crc: u32, bytes: &[u8]) -> u32 {
    let lookup = |table: usize, byte: u32| TABLES[table][usize::from(byte as u8)];
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let low = crc ^ u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        let high = u32::from_le_bytes([word[4], word[5], word[6], word[7]]);
        crc = lookup(7, low)
            ^ lookup(6, low >> 8)
            ^ lookup(5, low >> 16)
            ^ lookup(4, low >> 24)
            ^ lookup(3, high)
            ^ lookup(2, high >> 8)
            ^ lookup(1, high >> 16)
            ^ lookup(0, high >> 24);
    }
    words.remainder().iter().fold(crc, |crc, &byte| lookup(0, crc ^ u32::from(byte)) ^ (crc >> 8))
}

/// The frame check sequence of `frame` (zlib's `crc32`); it goes on the wire, and into
/// the receive ring, least significant byte first.
pub fn ethernet_fcs(frame: &[u8]) -> u32 {
    !update(!0, frame)
}

/// The MAR bit (0..64) that accepts multicast address `addr`, as Linux sets it.
pub fn multicast_hash_bit(addr: &[u8; 6]) -> u8 {
    (update(!0, addr).reverse_bits() >> 26) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcs_of_the_check_string() {
        assert_eq!(ethernet_fcs(b"123456789"), 0xcbf4_3926);
        assert_eq!(ethernet_fcs(b""), 0);
        // Lengths around the 8-byte steps, against a bit-by-bit CRC.
        let bytes: [u8; 40] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        for len in 0..bytes.len() {
            let mut crc = !0u32;
            for &byte in &bytes[..len] {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 { (crc >> 1) ^ POLYNOMIAL_REFLECTED } else { crc >> 1 };
                }
            }
            assert_eq!(ethernet_fcs(&bytes[..len]), !crc, "{len} bytes");
        }
    }

    /// Values of `ether_crc(6, addr) >> 26` (computed with zlib as bitrev32(~crc32)).
    #[test]
    fn multicast_hash_as_linux_computes_it() {
        let cases: [([u8; 6], u8); 5] = [
            ([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01], 31), // IPv4 all-hosts
            ([0x33, 0x33, 0x00, 0x00, 0x00, 0x01], 62), // IPv6 all-nodes
            ([0x33, 0x33, 0xff, 0x12, 0x34, 0x56], 2),  // an IPv6 solicited-node address
            ([0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa], 43), // SSDP
            ([0x01, 0x80, 0xc2, 0x00, 0x00, 0x00], 25), // STP
        ];
        for (addr, bit) in cases {
            assert_eq!(multicast_hash_bit(&addr), bit, "{addr:02x?}");
        }
    }
}
