//! The forms a key/value cache holds its values in, and how attention reads them back.
//!
//! f16 is the default, as llama.cpp's. Q8_0 (llama.cpp's `--cache-type-k/-v q8_0`) holds 32
//! values as bytes with one f16 scale: 34 bytes against 64, so a long context takes about
//! half the memory, and attention, which after a long context reads most of a small model's
//! bytes per token, reads half as many; the values lose about 1/254 of their block's largest.

use std::str::FromStr;

use half::{f16, slice::HalfFloatSliceExt};

/// How a cache holds keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvFormat {
    /// Two bytes a value.
    #[default]
    F16,
    /// Blocks of 32 bytes with an f16 scale ([`Q8Block`]); the CPU only.
    Q8_0,
}

impl KvFormat {
    /// The name `--kv-cache` takes and `get_config` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }
}

impl FromStr for KvFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            _ => Err(format!(
                "unknown key/value cache format {name:?}: use f16 or q8_0"
            )),
        }
    }
}

/// Values per [`Q8Block`].
pub(super) const Q8_BLOCK: usize = 32;

/// 32 values as `scale · q`, `q` a signed byte: llama.cpp's Q8_0 block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Q8Block {
    scale: f16,
    values: [i8; Q8_BLOCK],
}

impl Q8Block {
    /// The block nearest `x` (32 values): the largest magnitude maps to 127.
    pub(super) fn quantize(x: &[f32]) -> Self {
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        Self {
            scale: f16::from_f32(scale),
            values: std::array::from_fn(|i| (x[i] * inverse).round() as i8),
        }
    }

    /// The block's values into `out` (32).
    fn dequantize(&self, out: &mut [f32]) {
        let scale = self.scale.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.values) {
            *o = scale * q as f32;
        }
    }
}

/// Quantizes `x` (whole blocks) into `out`.
pub(super) fn quantize_into(x: &[f32], out: &mut [Q8Block]) {
    for (block, x) in out.iter_mut().zip(x.chunks_exact(Q8_BLOCK)) {
        *block = Q8Block::quantize(x);
    }
}

/// A run of cached values in one of the forms.
#[derive(Clone, Copy)]
pub(super) enum KvValues<'a> {
    F16(&'a [f16]),
    Q8_0(&'a [Q8Block]),
}

impl KvValues<'_> {
    /// How many values.
    pub(super) fn len(self) -> usize {
        match self {
            Self::F16(values) => values.len(),
            Self::Q8_0(blocks) => blocks.len() * Q8_BLOCK,
        }
    }

    /// Values `start..start + out.len()` into `out`; for Q8_0 both ends on block boundaries.
    pub(super) fn to_f32(self, start: usize, out: &mut [f32]) {
        match self {
            Self::F16(values) => values[start..start + out.len()].convert_to_f32_slice(out),
            Self::Q8_0(blocks) => {
                let blocks = &blocks[start / Q8_BLOCK..(start + out.len()) / Q8_BLOCK];
                for (block, out) in blocks.iter().zip(out.chunks_exact_mut(Q8_BLOCK)) {
                    block.dequantize(out);
                }
            }
        }
    }

    /// Values `range` (for Q8_0, on block boundaries).
    pub(super) fn slice(self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::F16(values) => Self::F16(&values[range]),
            Self::Q8_0(blocks) => Self::Q8_0(&blocks[range.start / Q8_BLOCK..range.end / Q8_BLOCK]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_blocks_keep_values_to_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0)
            .collect();
        let mut blocks = [Q8Block::default(); 2];
        quantize_into(&x, &mut blocks);
        let mut back = vec![0.0; 64];
        KvValues::Q8_0(&blocks).to_f32(0, &mut back);
        for (block, (x, back)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a step of max / 127, and the scale's f16 rounding (2⁻¹¹ of each value).
            for (a, b) in x.iter().zip(back) {
                assert!(
                    (a - b).abs() <= max / 254.0 + a.abs() / 1024.0,
                    "block {block}: {a} came back as {b}"
                );
            }
        }
        let mut zeros = [Q8Block::default(); 1];
        quantize_into(&[0.0; 32], &mut zeros);
        let mut back = [1.0; 32];
        KvValues::Q8_0(&zeros).to_f32(0, &mut back);
        assert_eq!(back, [0.0; 32]);
    }

    #[test]
    fn formats_are_named_as_llama_cpp_names_them() {
        assert_eq!("q8_0".parse(), Ok(KvFormat::Q8_0));
        assert_eq!("F16".parse(), Ok(KvFormat::F16));
        assert!("q4_0"
            .parse::<KvFormat>()
            .unwrap_err()
            .contains("f16 or q8_0"));
        assert_eq!(KvFormat::Q8_0.name(), "q8_0");
    }
}
