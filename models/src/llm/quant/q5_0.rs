//! Q5_0: per block of 32 weights, a scale `d` (f16), 32 fifth bits (bit `j` of a
//! little-endian u32 for weight `j`), then the low four bits of each weight, the first 16 in
//! the low nibbles and the last 16 in the high ones. A weight is `d · (q − 16)`. Qwen2.5's
//! Q4_K_M files store most of their matrices in Q5_0 (rows of 896 are not whole k-quant
//! super-blocks).

use half::f16;

use super::block32::Block32;
use super::BLOCK;

pub(super) struct Q5_0;

impl Block32 for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: bool = false;
    const SIGNED: bool = true;
    const BITS: u32 = 5;
    const ZERO: i32 = 16;

    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let fifth = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        (d, 0.0, five_bit_values(fifth, &block[6..]).map(|q| q - 16))
    }

    #[cfg(avx2_kernels)]
    #[inline]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128) {
        use super::block32::{halves, nibbles};
        // SAFETY: a block is `d` (f16), four bytes of fifth bits, then 16 bytes, and the CPU
        // has the features: the caller's promise.
        unsafe {
            let fifth = (block.add(2) as *const u32).read_unaligned();
            (
                signed_five_bits(nibbles(block.add(6)), fifth),
                halves(block),
            )
        }
    }
}

/// `q − 16` as signed bytes from the low four bits and the fifth bits: the low bits, with the
/// top four set where the fifth bit is not. AVX-512 masks the bytes by the bits directly.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512bw",
    target_feature = "avx512vl"
))]
#[target_feature(enable = "avx2,avx512bw,avx512vl")]
fn signed_five_bits(low: std::arch::x86_64::__m256i, fifth: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_mask_sub_epi8(low, !fifth, low, _mm256_set1_epi8(16))
}

/// The same on AVX2, through a byte mask of the bits.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c",
    not(all(target_feature = "avx512bw", target_feature = "avx512vl"))
))]
#[target_feature(enable = "avx2")]
fn signed_five_bits(low: std::arch::x86_64::__m256i, fifth: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let top = _mm256_andnot_si256(
        super::block32::fifth_bits(fifth),
        _mm256_set1_epi8(0xF0u8 as i8),
    );
    _mm256_or_si256(low, top)
}

/// Five-bit values from their fifth bits and their packed low nibbles (Q5_0 and Q5_1).
pub(super) fn five_bit_values(fifth: u32, packed: &[u8]) -> [i32; BLOCK] {
    std::array::from_fn(|j| {
        let low = match j {
            0..16 => packed[j] & 0x0F,
            _ => packed[j - 16] >> 4,
        };
        (low as i32) | ((fifth >> j) as i32 & 1) << 4
    })
}
