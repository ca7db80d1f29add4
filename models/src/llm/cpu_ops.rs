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

/// The rows of one sequence that share a key/value head, each with its group of query heads
/// (`queries`: per row, `groups` heads of `head_size` values, one after another), against one
/// span of the sequence's cached positions (`keys`, `values`: rows of `head_size` values, f16
/// or Q8_0). Row `r` sees the span's first `visible[r]` positions: those up to its own. The
/// span is converted to f32 once for every row, and each row's scores and weighted values are
/// two small matrix products (gemm, on the widest SIMD the CPU has). Writes, per query, `[m, Σ e^(s−m), Σ e^(s−m) · value]` into `parts`,
/// where `s = q · key · scale` over the positions the query sees and `m` their largest `s`;
/// a row that sees none gets `[−∞, 0, 0…]`, which [`merge_spans`] weighs as nothing.
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
    let n_queries = queries.len() / head_size;
    let groups = n_queries / visible.len();
    let part_len = span_part_len(head_size);
    assert_eq!(parts.len(), n_queries * part_len, "parts of the wrong size");
    SPAN_SCRATCH.with_borrow_mut(|(held, scores)| {
        held.resize(keys.len(), 0.0);
        scores.resize(n_queries * len, 0.0);
        keys.to_f32(0, held);
        // Each row's scores (its queries against the positions it sees) and below its
        // weighted values are products of their own: a product's sums run in an order that
        // depends on its shape, and a row's result must depend neither on the other rows of
        // its chunk nor on how far they reach (or a prompt's results on how it was split).
        for (r, &seen) in visible.iter().enumerate() {
            if seen == 0 {
                continue;
            }
            // SAFETY: the row's scores are `groups` rows of `len` values (the first `seen`
            // written) inside `scores` (n_queries × len, sized above); its queries `groups`
            // rows of head_size inside `queries`; `held` holds at least `seen` rows of
            // head_size, read transposed (element (d, j) at j·head_size + d). `scores`
            // overlaps neither.
            unsafe {
                gemm::gemm(
                    groups,
                    seen,
                    head_size,
                    scores.as_mut_ptr().add(r * groups * len),
                    1,
                    len as isize,
                    false,
                    queries.as_ptr().add(r * groups * head_size),
                    1,
                    head_size as isize,
                    held.as_ptr(),
                    head_size as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for (q, (scores, part)) in scores
            .chunks_exact_mut(len)
            .zip(parts.chunks_exact_mut(part_len))
            .enumerate()
        {
            let seen = &mut scores[..visible[q / groups]];
            if seen.is_empty() {
                part[0] = f32::NEG_INFINITY;
                part[1] = 0.0;
                continue;
            }
            let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0.0;
            for s in seen.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            part[0] = max;
            part[1] = total;
        }
        values.to_f32(0, held);
        for (r, &seen) in visible.iter().enumerate() {
            let parts = &mut parts[r * groups * part_len..][..groups * part_len];
            if seen == 0 {
                // Its `[−∞, 0]` are set above; nothing weighted.
                for part in parts.chunks_exact_mut(part_len) {
                    part[2..].fill(0.0);
                }
                continue;
            }
            // SAFETY: each of the row's queries' weighted values go after its `m` and total:
            // `groups` rows of head_size values, part_len apart, inside `parts` (groups ×
            // part_len values); the row's scores are `groups` rows of `len` values (the first
            // `seen` read) and `held` has at least `seen` rows of head_size, all row-major.
            // `parts` overlaps neither.
            unsafe {
                gemm::gemm(
                    groups,
                    head_size,
                    seen,
                    parts.as_mut_ptr().add(2),
                    1,
                    part_len as isize,
                    false,
                    scores.as_ptr().add(r * groups * len),
                    1,
                    len as isize,
                    held.as_ptr(),
                    1,
                    head_size as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    });
}

thread_local! {
    /// A worker's span of keys (then values) in f32, and its scores. Kept between spans: a
    /// span is up to a few hundred kilobytes, which a fresh allocation would fault in anew.
    static SPAN_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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
}
