//! The trace hash: one number that says whether two runs did the same thing.
//!
//! Every applied command and its outcome is fed, with the time and the
//! sender, through 64-bit FNV-1a. The hasher is written here rather than
//! taken from `std` because `std`'s hashers are seeded per process; FNV is
//! the same everywhere. Integer widths are normalised to 64 bits, so the
//! hash does not depend on the platform's `usize` either.

use std::fmt;
use std::hash::{Hash, Hasher};

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(OFFSET_BASIS)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_i64(n as i64);
    }
}

/// The running hash of a simulation's trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceHash(Fnv);

impl TraceHash {
    /// Adds one step.
    pub fn add(&mut self, step: &impl Hash) {
        step.hash(&mut self.0);
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0.finish()
    }
}

impl fmt::Display for TraceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.value())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        let mut h = Fnv::default();
        h.write(b"");
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv::default();
        h.write(b"foobar");
        assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_trace_hash_depends_on_order() {
        let (mut a, mut b) = (TraceHash::default(), TraceHash::default());
        a.add(&1u32);
        a.add(&2u32);
        b.add(&2u32);
        b.add(&1u32);
        assert_ne!(a, b);
    }
}
