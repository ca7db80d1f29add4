//! The small vector operations of one generated token, on plain slices.
//!
//! A generation step of a small model is hundreds of operations on vectors of a few hundred
//! values. As tensor operations each costs an allocation, a dispatch and often a hand-off to
//! the thread pool, which together took longer than the arithmetic; as loops over slices they
//! cost only the arithmetic. Each function here matches a candle operation, which the tests
//! check it against.

use std::cell::RefCell;

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

/// Positions scored together: their scores stay in registers while a query's values stream
/// past.
const SCORE_BLOCK: usize = 32;

/// Values of a head weighed together: their sums stay in registers while the span's positions
/// stream past.
const VALUE_BLOCK: usize = 64;

/// The rows of one sequence that share a key/value head, each with its group of query heads
/// (`queries`: per row, `groups` heads of `head_size` values, one after another), against one
/// span of the sequence's cached positions (`keys`, `values`: rows of `head_size` values, f16
/// or Q8_0). Row `r` sees the span's first `visible[r]` positions: those up to its own. The
/// span is converted to f32 once for every row (the keys transposed, a head value's positions
/// side by side). Writes, per query, `[m, Σ e^(s−m), Σ e^(s−m) · value]` into `parts`, where
/// `s = q · key · scale` over the positions the query sees and `m` their largest `s`; a row
/// that sees none gets `[−∞, 0, 0…]`, which [`merge_spans`] weighs as nothing.
///
/// Every sum runs in one fixed order, a score's over the head's values and a weighted value's
/// over the positions, whatever the other rows of the chunk are or how far they reach: a
/// prompt gives the same results however it is split into chunks. (A matrix product's sums run
/// in an order that depends on its shape.)
pub(super) fn attend_span(
    queries: &[f32],
    visible: &[usize],
    keys: KvValues<'_>,
    values: KvValues<'_>,
    head_size: usize,
    scale: f32,
    parts: &mut [f32],
) {
    let len = keys.len() / head_size;
    let padded = len.next_multiple_of(SCORE_BLOCK);
    let n_queries = queries.len() / head_size;
    let groups = n_queries / visible.len();
    let part_len = span_part_len(head_size);
    assert_eq!(parts.len(), n_queries * part_len, "parts of the wrong size");
    SPAN_SCRATCH.with_borrow_mut(|scratch| {
        let SpanScratch {
            held,
            keys_by_value,
            scores,
        } = scratch;
        held.resize(keys.len(), 0.0);
        keys.to_f32(0, held);
        keys_by_value.resize(head_size * padded, 0.0);
        transpose(held, head_size, keys_by_value, padded);
        // Padding past `len` is zero and scored like the rest, then ignored.
        for keys in keys_by_value.chunks_exact_mut(padded) {
            keys[len..].fill(0.0);
        }
        scores.resize(n_queries * padded, 0.0);
        // Two queries at a time, each key value read once for both: eight sums in flight hide
        // the latency of each one's chain of multiply-adds.
        for (pair, (queries, scores)) in queries
            .chunks(2 * head_size)
            .zip(scores.chunks_mut(2 * padded))
            .enumerate()
        {
            let seen = (2 * pair..2 * pair + queries.len() / head_size)
                .map(|q| visible[q / groups])
                .max()
                .unwrap_or(0);
            for block in 0..seen.div_ceil(SCORE_BLOCK) {
                let keys = &keys_by_value[block * SCORE_BLOCK..];
                let scores = &mut scores[block * SCORE_BLOCK..];
                match queries.split_at_checked(head_size) {
                    Some((first, second)) if !second.is_empty() => {
                        let [a, b] = score_block([first, second], keys, padded, scale);
                        scores[..SCORE_BLOCK].copy_from_slice(&a);
                        scores[padded..][..SCORE_BLOCK].copy_from_slice(&b);
                    }
                    _ => {
                        let [a] = score_block([queries], keys, padded, scale);
                        scores[..SCORE_BLOCK].copy_from_slice(&a);
                    }
                }
            }
        }
        for (q, (scores, part)) in scores
            .chunks_exact_mut(padded)
            .zip(parts.chunks_exact_mut(part_len))
            .enumerate()
        {
            let seen = &mut scores[..visible[q / groups]];
            if seen.is_empty() {
                part[0] = f32::NEG_INFINITY;
                part[1] = 0.0;
                continue;
            }
            let (max, total) = exponentiate(seen);
            part[0] = max;
            part[1] = total;
        }
        values.to_f32(0, held);
        for (q, (weights, part)) in scores
            .chunks_exact(padded)
            .zip(parts.chunks_exact_mut(part_len))
            .enumerate()
        {
            let weights = &weights[..visible[q / groups]];
            for (block, out) in part[2..].chunks_mut(VALUE_BLOCK).enumerate() {
                let first = block * VALUE_BLOCK;
                if let Ok(out) = <&mut [f32; VALUE_BLOCK]>::try_from(&mut *out) {
                    let mut sums = [0.0f32; VALUE_BLOCK];
                    for (&w, value) in weights.iter().zip(held.chunks_exact(head_size)) {
                        let value = &value[first..first + VALUE_BLOCK];
                        for (sum, &v) in sums.iter_mut().zip(value) {
                            *sum = w.mul_add(v, *sum);
                        }
                    }
                    *out = sums;
                } else {
                    // A head whose size is no multiple of the block: its last values, in the
                    // same order.
                    out.fill(0.0);
                    for (&w, value) in weights.iter().zip(held.chunks_exact(head_size)) {
                        for (sum, &v) in out.iter_mut().zip(&value[first..]) {
                            *sum = w.mul_add(v, *sum);
                        }
                    }
                }
            }
        }
    });
}

/// The scores of `Q` queries against a block of positions: `keys` holds, `padded` apart, each
/// head value of the block's positions and those after. Each score's sum runs over the head's
/// values in order.
#[inline(always)]
fn score_block<const Q: usize>(
    queries: [&[f32]; Q],
    keys: &[f32],
    padded: usize,
    scale: f32,
) -> [[f32; SCORE_BLOCK]; Q] {
    let mut sums = [[0.0f32; SCORE_BLOCK]; Q];
    let head_size = queries[0].len();
    for (d, keys) in keys.chunks(padded).take(head_size).enumerate() {
        let keys: &[f32; SCORE_BLOCK] = keys[..SCORE_BLOCK].try_into().expect("a whole block");
        for (sums, query) in sums.iter_mut().zip(queries) {
            let x = query[d];
            for (sum, &k) in sums.iter_mut().zip(keys) {
                *sum = x.mul_add(k, *sum);
            }
        }
    }
    sums.map(|sums| sums.map(|sum| sum * scale))
}

/// `out[d * stride + p] = rows[p * width + d]`: the `rows.len() / width` rows of `width`
/// values as columns, `stride` apart. Eight by eight in registers; what is left over of the
/// tiles, value by value. (A span's keys, a value at a time, took most of a generated token's
/// attention.)
fn transpose(rows: &[f32], width: usize, out: &mut [f32], stride: usize) {
    let n = rows.len() / width;
    assert!(
        n <= stride && out.len() >= width * stride,
        "columns past `out`"
    );
    let (tiled_rows, tiled_width) = (n - n % 8, width - width % 8);
    for p in (0..tiled_rows).step_by(8) {
        for d in (0..tiled_width).step_by(8) {
            transpose_tile(
                &rows[p * width + d..],
                width,
                &mut out[d * stride + p..],
                stride,
            );
        }
    }
    for (p, row) in rows.chunks_exact(width).enumerate() {
        let done = if p < tiled_rows { tiled_width } else { 0 };
        for (d, &x) in row.iter().enumerate().skip(done) {
            out[d * stride + p] = x;
        }
    }
}

/// One tile of [`transpose`]: eight rows of eight values from the start of `rows` (`width`
/// apart) as eight columns at the start of `out` (`stride` apart).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn transpose_tile(rows: &[f32], width: usize, out: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    assert!(
        rows.len() >= 7 * width + 8 && out.len() >= 7 * stride + 8,
        "a tile past its slice"
    );
    // SAFETY: the eight loads read eight floats at `i · width` (i < 8) and the eight stores
    // write eight at `i · stride`, inside `rows` and `out` by the assertion; AVX2 is in the
    // build's target features (the `cfg` above).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows.as_ptr().add(i * width)));
        // Pairs of rows interleaved, then pairs of pairs: each 128-bit half then holds four
        // values of one column; the halves are put together last.
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let columns = [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ];
        for (i, column) in columns.into_iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(i * stride), column);
        }
    }
}

/// One tile of [`transpose`], value by value: the reference for the one above, and the form
/// for builds without AVX2.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2"), allow(dead_code))]
fn transpose_tile_by_value(rows: &[f32], width: usize, out: &mut [f32], stride: usize) {
    for p in 0..8 {
        for d in 0..8 {
            out[d * stride + p] = rows[p * width + d];
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
use transpose_tile_by_value as transpose_tile;

/// Lanes of the running largest score and sum of weights: in a fixed order, like the other
/// sums here, but side by side so that they run at SIMD width.
const LANES: usize = 8;

/// Replaces each score `s` by `e^(s−m)` and returns `(m, Σ e^(s−m))`, `m` the largest score.
/// `scores` is not empty.
fn exponentiate(scores: &mut [f32]) -> (f32, f32) {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut whole = scores.chunks_exact(LANES);
    for lanes in whole.by_ref() {
        for (m, &s) in maxima.iter_mut().zip(lanes) {
            *m = m.max(s);
        }
    }
    for (m, &s) in maxima.iter_mut().zip(whole.remainder()) {
        *m = m.max(s);
    }
    let max = maxima.into_iter().fold(f32::NEG_INFINITY, f32::max);
    // A loop of its own: one that also adds up vectorizes poorly.
    for s in scores.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    let mut totals = [0.0f32; LANES];
    let mut whole = scores.chunks_exact(LANES);
    for lanes in whole.by_ref() {
        for (total, &s) in totals.iter_mut().zip(lanes) {
            *total += s;
        }
    }
    for (total, &s) in totals.iter_mut().zip(whole.remainder()) {
        *total += s;
    }
    (max, totals.into_iter().sum())
}

/// `e^x` for `x ≤ 0`, within about one unit in the last place (Cephes' `expf`: `x = n·ln 2 + r`,
/// a polynomial for `e^r`, `2^n` in the exponent bits), as plain arithmetic that vectorizes,
/// unlike a call to the C library. Below −87 (weights under 10⁻³⁸ of the largest) it gives
/// 2⁻¹²⁶ instead of underflowing to 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 · 2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let rounded = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = rounded - ROUND;
    let r = n.mul_add(-LN2_LOW, n.mul_add(-LN2_HIGH, x));
    let p = r.mul_add(1.987_569_2e-4, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e_r = (p * r).mul_add(r, r) + 1.0;
    // `rounded`'s low bits hold `n` (as an offset from ROUND's): with the exponent bias, they
    // are 2ⁿ's exponent.
    let biased = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e_r * f32::from_bits(biased << 23)
}

/// A worker's span in f32 and its scores ([`attend_span`]). Kept between spans: a span is up
/// to a few hundred kilobytes, which a fresh allocation would fault in anew.
#[derive(Default)]
struct SpanScratch {
    /// The span's keys, then its values, as they are laid out in the cache.
    held: Vec<f32>,
    /// The keys by head value: value `d` of every position, then `d + 1`'s.
    keys_by_value: Vec<f32>,
    /// Each query's scores, then weights.
    scores: Vec<f32>,
}

thread_local! {
    static SPAN_SCRATCH: RefCell<SpanScratch> = RefCell::new(SpanScratch::default());
}

/// Softmax attention of each query head of a group from its spans' parts ([`attend_span`]:
/// each item of `spans` is one span's parts for the group): `out = Σ e^(m−M) · weighted /
/// Σ e^(m−M) · total`, `M` the largest `m`, which is what one pass over all positions gives.
pub(super) fn merge_spans<'a>(
    spans: impl Iterator<Item = &'a [f32]> + Clone,
    head_size: usize,
    out: &mut [f32],
) {
    let part_len = span_part_len(head_size);
    for (g, out) in out.chunks_exact_mut(head_size).enumerate() {
        let parts = || spans.clone().map(|s| &s[g * part_len..][..part_len]);
        let max = parts().fold(f32::NEG_INFINITY, |m, p| m.max(p[0]));
        let mut total = 0.0;
        out.fill(0.0);
        for part in parts() {
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

        // Two rows, each with three query heads sharing a key/value head, over three spans of
        // uneven length, with the cache in each form: each row's attention over the positions
        // up to its own (the first row's stops inside the third span, and it sees none of a
        // fourth span that only the second row reaches).
        let (len, groups, own) = (37, 3, [20usize, 36]);
        let (keys, vals) = (values(len * d, 5), values(len * d, 6));
        let queries = values(own.len() * groups * d, 7);
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
            let span_len = own.len() * groups * span_part_len(d);
            let bounds = [0, 16, 17, 24, len];
            let mut parts = vec![0.0; (bounds.len() - 1) * span_len];
            for (span, part) in bounds.windows(2).zip(parts.chunks_exact_mut(span_len)) {
                let rows = span[0] * d..span[1] * d;
                let visible = own.map(|p| (p + 1).saturating_sub(span[0]).min(span[1] - span[0]));
                attend_span(
                    &queries,
                    &visible,
                    held_keys.slice(rows.clone()),
                    held_values.slice(rows),
                    d,
                    0.125,
                    part,
                );
            }
            let held = |v: KvValues<'_>| -> candle_core::Result<Tensor> {
                let mut out = vec![0.0; v.len()];
                v.to_f32(0, &mut out);
                Tensor::new(out.as_slice(), &dev)?.reshape((len, d))
            };
            let (k, v) = (held(held_keys)?, held(held_values)?);
            let row_len = groups * span_part_len(d);
            for (r, &position) in own.iter().enumerate() {
                let mut out = vec![0.0; groups * d];
                let spans = parts
                    .chunks_exact(span_len)
                    .map(|s| &s[r * row_len..][..row_len]);
                merge_spans(spans, d, &mut out);
                let q = &queries[r * groups * d..][..groups * d];
                let q = Tensor::new(q, &dev)?.reshape((groups, d))?;
                let (k, v) = (k.narrow(0, 0, position + 1)?, v.narrow(0, 0, position + 1)?);
                let scores = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * 0.125)?, D::Minus1)?;
                close(&out, &scores.matmul(&v)?.flatten_all()?.to_vec1()?);
            }
        }

        let mut gate = x.clone();
        silu_mul(&mut gate, &w);
        let expect = (candle_nn::ops::silu(&Tensor::new(x.as_slice(), &dev)?)?
            * Tensor::new(w.as_slice(), &dev)?)?;
        close(&gate, &expect.to_vec1()?);
        Ok(())
    }

    #[test]
    fn exp_is_within_two_units_in_the_last_place() {
        for i in 0..=870_000 {
            let x = -(i as f32) / 10_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want,
                "e^{x}: {got} vs {want}"
            );
        }
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    /// A row's attention is the same bit for bit alone and beside other rows that reach other
    /// lengths, with an odd number of queries and a head of a size no multiple of the blocks:
    /// a prompt's results must not depend on how it was split into chunks.
    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        let (d, len, groups, seen) = (80, 45, 3, [45usize, 7, 33]);
        let half = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
        let (keys, vals) = (half(values(len * d, 8)), half(values(len * d, 9)));
        let queries = values(seen.len() * groups * d, 10);
        let row_len = groups * span_part_len(d);
        let attend = |queries: &[f32], visible: &[usize]| {
            let mut parts = vec![0.0; visible.len() * row_len];
            let (k, v) = (KvValues::F16(&keys), KvValues::F16(&vals));
            attend_span(queries, visible, k, v, d, 0.1, &mut parts);
            parts
        };
        let together = attend(&queries, &seen);
        for (r, &visible) in seen.iter().enumerate() {
            let alone = attend(&queries[r * groups * d..][..groups * d], &[visible]);
            assert_eq!(alone, together[r * row_len..][..row_len], "row {r}");
        }
    }

    #[test]
    fn transpose_matches_value_by_value() {
        // Rows and widths with and without whole tiles left over.
        for (n, width, stride) in [(16, 64, 32), (37, 80, 64), (5, 12, 8)] {
            let rows = values(n * width, 11);
            let mut out = vec![0.0; width * stride];
            transpose(&rows, width, &mut out, stride);
            for (p, row) in rows.chunks_exact(width).enumerate() {
                for (d, &x) in row.iter().enumerate() {
                    assert_eq!(out[d * stride + p], x, "row {p}, value {d}");
                }
            }
            if n < 8 {
                continue;
            }
            let mut tile = vec![0.0; 8 * stride];
            transpose_tile_by_value(&rows, width, &mut tile, stride);
            assert!((0..8).all(|p| (0..8).all(|d| tile[d * stride + p] == out[d * stride + p])));
        }
    }
}
