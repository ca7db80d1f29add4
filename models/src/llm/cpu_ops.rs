//! The small vector operations of one generated token, on plain slices.
//!
//! A generation step of a small model is hundreds of operations on vectors of a few hundred
//! values. As tensor operations each costs an allocation, a dispatch and often a hand-off to
//! the thread pool, which together took longer than the arithmetic; as loops over slices they
//! cost only the arithmetic. Each function here matches a candle operation, which the tests
//! check it against.

use super::kv_format::KvValues;

/// `out = x / sqrt(mean(x²) + eps) * weight`.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let root = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v / root * w;
    }
}

/// Rotates one head in place, pairs adjacent (`x[2i]`, `x[2i+1]`): llama.cpp's Llama layout.
pub(super) fn rope_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, c), s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// Rotates one head in place, pairs half a head apart (`x[i]`, `x[i + d/2]`): Qwen's layout.
pub(super) fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (first, second) = x.split_at_mut(x.len() / 2);
    for (((a, b), c), s) in first.iter_mut().zip(second).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// Cached positions per piece of one query's attention. Pieces run in parallel and merge
/// exactly ([`merge_spans`]), so a single generated token spreads its attention over every
/// thread however few key/value heads the model has (flash-decoding).
pub(super) const ATTENTION_SPAN: usize = 256;

/// Floats each query head's part of a span takes: largest score, sum of weights, weighted sum
/// of values.
pub(super) fn span_part_len(head_size: usize) -> usize {
    head_size + 2
}

/// Keys (or values) converted to f32 at a time: a few kilobytes that stay in L1.
const CONVERT_ROWS: usize = 16;

/// A group of query heads that share a key/value head (`queries`: heads of `head_size` values,
/// one after another) against one span of cached positions (`keys`, `values`: rows of
/// `head_size` values, f16 or Q8_0). Each key and value is read once for the whole group.
/// Writes, per query, `[m, Σ e^(s−m), Σ e^(s−m) · value]` into `parts`, where
/// `s = q · key · scale` and `m` is the span's largest `s`.
pub(super) fn attend_span(
    queries: &[f32],
    keys: KvValues<'_>,
    values: KvValues<'_>,
    head_size: usize,
    scale: f32,
    parts: &mut [f32],
) {
    let len = keys.len() / head_size;
    let groups = queries.len() / head_size;
    let mut rows = [0.0f32; CONVERT_ROWS * MAX_HEAD_SIZE];
    let mut scores = vec![0.0f32; groups * len];
    // Chunks of rows converted to f32 at a time: their first value, and their values.
    let chunks = || {
        (0..keys.len())
            .step_by(CONVERT_ROWS * head_size)
            .map(|start| (start, (CONVERT_ROWS * head_size).min(keys.len() - start)))
            .enumerate()
    };
    for (chunk, (start, n)) in chunks() {
        let rows = &mut rows[..n];
        keys.to_f32(start, rows);
        for (i, key) in rows.chunks_exact(head_size).enumerate() {
            for (g, q) in queries.chunks_exact(head_size).enumerate() {
                scores[g * len + chunk * CONVERT_ROWS + i] = dot(q, key) * scale;
            }
        }
    }
    let part_len = span_part_len(head_size);
    for (scores, part) in scores
        .chunks_exact_mut(len)
        .zip(parts.chunks_exact_mut(part_len))
    {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        part[0] = max;
        part[1] = total;
        part[2..].fill(0.0);
    }
    for (chunk, (start, n)) in chunks() {
        let rows = &mut rows[..n];
        values.to_f32(start, rows);
        for (i, value) in rows.chunks_exact(head_size).enumerate() {
            for (g, part) in parts.chunks_exact_mut(part_len).enumerate() {
                let weight = scores[g * len + chunk * CONVERT_ROWS + i];
                for (o, x) in part[2..].iter_mut().zip(value) {
                    *o += weight * x;
                }
            }
        }
    }
}

/// The largest head size [`attend_span`] takes (Gemma's; Llama and Qwen use 64 or 128).
pub(super) const MAX_HEAD_SIZE: usize = 256;

/// Softmax attention of each query head from its spans' parts ([`attend_span`], one span's
/// parts after another in `parts`): `out = Σ e^(m−M) · weighted / Σ e^(m−M) · total`, `M` the
/// largest `m`, which is what one pass over all positions gives.
pub(super) fn merge_spans(parts: &[f32], head_size: usize, out: &mut [f32]) {
    let part_len = span_part_len(head_size);
    let groups = out.len() / head_size;
    for (g, out) in out.chunks_exact_mut(head_size).enumerate() {
        let spans = || {
            parts
                .chunks_exact(part_len * groups)
                .map(|s| &s[g * part_len..][..part_len])
        };
        let max = spans().fold(f32::NEG_INFINITY, |m, p| m.max(p[0]));
        let mut total = 0.0;
        out.fill(0.0);
        for part in spans() {
            let weight = (part[0] - max).exp();
            total += weight * part[1];
            for (o, x) in out.iter_mut().zip(&part[2..]) {
                *o += weight * x;
            }
        }
        for o in out.iter_mut() {
            *o /= total;
        }
    }
}

/// `gate * sigmoid(gate) * up`, into `gate`.
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub(super) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// A dot product in eight independent lanes, which the compiler turns into SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::kv_format::{quantize_into, Q8Block, Q8_BLOCK};
    use candle_core::{Device, Tensor, D};
    use half::f16;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn match_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let d = 64;
        let x = values(d, 1);
        let w = values(d, 2);

        let mut out = vec![0.0; d];
        rms_norm(&x, &w, 1e-5, &mut out);
        let t = Tensor::new(x.as_slice(), &dev)?.reshape((1, d))?;
        let expect = candle_nn::ops::rms_norm(&t, &Tensor::new(w.as_slice(), &dev)?, 1e-5)?;
        close(&out, &expect.flatten_all()?.to_vec1()?);

        let (cos, sin) = (values(d / 2, 3), values(d / 2, 4));
        let as_head = |v: &[f32]| Tensor::new(v, &dev)?.reshape((1, 1, 1, d));
        let tables = |v: &[f32]| Tensor::new(v, &dev)?.reshape((1, d / 2));
        let mut rotated = x.clone();
        rope_interleaved(&mut rotated, &cos, &sin);
        let expect = candle_nn::rotary_emb::rope_i(&as_head(&x)?, &tables(&cos)?, &tables(&sin)?)?;
        close(&rotated, &expect.flatten_all()?.to_vec1()?);
        let mut rotated = x.clone();
        rope_halves(&mut rotated, &cos, &sin);
        let expect = candle_nn::rotary_emb::rope(&as_head(&x)?, &tables(&cos)?, &tables(&sin)?)?;
        close(&rotated, &expect.flatten_all()?.to_vec1()?);

        // Three query heads sharing a key/value head, over three spans of uneven length, with
        // the cache in each form: attention over the values it holds.
        let (len, groups) = (37, 3);
        let (keys, vals) = (values(len * d, 5), values(len * d, 6));
        let queries = values(groups * d, 7);
        let half = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
        let (keys16, vals16) = (half(&keys), half(&vals));
        let blocks = |v: &[f32]| {
            let mut blocks = vec![Q8Block::default(); v.len() / Q8_BLOCK];
            quantize_into(v, &mut blocks);
            blocks
        };
        let (keys8, vals8) = (blocks(&keys), blocks(&vals));
        for (held_keys, held_values) in [
            (KvValues::F16(&keys16), KvValues::F16(&vals16)),
            (KvValues::Q8_0(&keys8), KvValues::Q8_0(&vals8)),
        ] {
            let part_len = groups * span_part_len(d);
            let bounds = [0, 16, 17, len];
            let mut parts = vec![0.0; 3 * part_len];
            for (span, part) in bounds.windows(2).zip(parts.chunks_exact_mut(part_len)) {
                let rows = span[0] * d..span[1] * d;
                attend_span(
                    &queries,
                    held_keys.slice(rows.clone()),
                    held_values.slice(rows),
                    d,
                    0.125,
                    part,
                );
            }
            let mut out = vec![0.0; groups * d];
            merge_spans(&parts, d, &mut out);
            let held = |v: KvValues<'_>| -> candle_core::Result<Tensor> {
                let mut out = vec![0.0; v.len()];
                v.to_f32(0, &mut out);
                Tensor::new(out.as_slice(), &dev)?.reshape((len, d))
            };
            let q = Tensor::new(queries.as_slice(), &dev)?.reshape((groups, d))?;
            let (k, v) = (held(held_keys)?, held(held_values)?);
            let scores = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * 0.125)?, D::Minus1)?;
            close(&out, &scores.matmul(&v)?.flatten_all()?.to_vec1()?);
        }

        let mut gate = x.clone();
        silu_mul(&mut gate, &w);
        let expect = (candle_nn::ops::silu(&Tensor::new(x.as_slice(), &dev)?)?
            * Tensor::new(w.as_slice(), &dev)?)?;
        close(&gate, &expect.to_vec1()?);
        Ok(())
    }
}
