//! Q5_1: per block of 32 weights, a scale `d` and a minimum `m` (f16 each), 32 fifth bits,
//! then the low four bits of each weight, as in Q5_0. A weight is `d · q + m`.

use half::f16;

use super::block32::Block32;
use super::q5_0::five_bit_values;
use super::BLOCK;

pub(super) struct Q5_1;

impl Block32 for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: bool = true;
    const SIGNED: bool = false;
    const BITS: u32 = 5;
    const ZERO: i32 = 0;

    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let fifth = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
        (d, m, five_bit_values(fifth, &block[8..]))
    }

    #[cfg(avx2_kernels)]
    #[inline]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128) {
        use super::block32::{fifth_bits, halves, nibbles};
        use std::arch::x86_64::*;
        // SAFETY: a block is `d` and `m` (f16), four bytes of fifth bits, then 16 bytes, and
        // the CPU has the features: the caller's promise.
        unsafe {
            let fifth = (block.add(4) as *const u32).read_unaligned();
            (
                _mm256_or_si256(
                    nibbles(block.add(8)),
                    _mm256_and_si256(fifth_bits(fifth), _mm256_set1_epi8(0x10)),
                ),
                halves(block),
            )
        }
    }
}
