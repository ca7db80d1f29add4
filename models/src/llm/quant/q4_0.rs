//! Q4_0: per block of 32 weights, a scale `d` (f16), then 32 four-bit values `q`, the first 16
//! in the low nibbles and the last 16 in the high ones. A weight is `d · (q − 8)`.

use half::f16;

use super::block32::Block32;
use super::BLOCK;

pub(super) struct Q4_0;

impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: bool = false;
    const SIGNED: bool = true;
    const BITS: u32 = 4;
    const ZERO: i32 = 8;

    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let packed = &block[2..];
        let q = std::array::from_fn(|j| match j {
            0..16 => (packed[j] & 0x0F) as i32 - 8,
            _ => (packed[j - 16] >> 4) as i32 - 8,
        });
        (d, 0.0, q)
    }

    #[cfg(avx2_kernels)]
    #[inline]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128) {
        use super::block32::{halves, nibbles};
        use std::arch::x86_64::*;
        // SAFETY: a block is `d` (f16), then 16 bytes, and the CPU has the features: the
        // caller's promise.
        unsafe {
            (
                _mm256_sub_epi8(nibbles(block.add(2)), _mm256_set1_epi8(8)),
                halves(block),
            )
        }
    }
}
