//! Q8_0: per block of 32 weights, a scale `d` (f16), then 32 signed bytes `q`. SmolLM2's
//! output layer (the tied embeddings) is Q8_0, and at 49,152 rows it is the largest matrix of
//! a step.

use half::f16;

use super::block32::Block32;
use super::BLOCK;

pub(super) struct Q8_0;

impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: bool = false;
    const SIGNED: bool = true;
    const BITS: u32 = 8;
    const ZERO: i32 = 0;

    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        (d, 0.0, std::array::from_fn(|j| block[2 + j] as i8 as i32))
    }

    #[cfg(avx2_kernels)]
    #[inline]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128) {
        use std::arch::x86_64::*;
        // SAFETY: a block is `d` (f16), then 32 bytes; the caller's promise covers both.
        unsafe {
            (
                _mm256_loadu_si256(block.add(2) as *const __m256i),
                super::block32::halves(block),
            )
        }
    }
}
