//! Q4_1: per block of 32 weights, a scale `d` and a minimum `m` (f16 each), then 32 four-bit
//! values `q`, the first 16 in the low nibbles and the last 16 in the high ones. A weight is
//! `d · q + m`. SmolLM2's offline default is Q4_1.

use half::f16;

use super::block32::Block32;
use super::BLOCK;

pub(super) struct Q4_1;

impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: bool = true;
    const SIGNED: bool = false;
    const BITS: u32 = 4;
    const ZERO: i32 = 0;

    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let packed = &block[4..];
        let q = std::array::from_fn(|j| match j {
            0..16 => (packed[j] & 0x0F) as i32,
            _ => (packed[j - 16] >> 4) as i32,
        });
        (d, m, q)
    }

    #[cfg(avx2_kernels)]
    #[inline]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128) {
        use super::block32::{halves, nibbles};
        // SAFETY: a block is `d` and `m` (f16), then 16 bytes; the caller's promise covers
        // them.
        unsafe { (nibbles(block.add(4)), halves(block)) }
    }
}
