//! The small vector operations of one generated token, on plain slices.
//!
//! A generation step of a small model is hundreds of operations on vectors of a few hundred
//! values. As tensor operations each costs an allocation, a dispatch and often a hand-off to
//! the thread pool, which together took longer than the arithmetic; as loops over slices they
//! cost only the arithmetic. Each function here matches a candle operation, which the tests
//! check it against.

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

/// One query head against the first `len` rows of its key/value head (rows of `q.len()`
/// values): `out = softmax(q · keysᵀ · scale) · values`.
pub(super) fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    len: usize,
    scale: f32,
    out: &mut [f32],
) {
    let size = q.len();
    let mut scores: Vec<f32> = keys[..len * size]
        .chunks_exact(size)
        .map(|k| dot(q, k) * scale)
        .collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut total = 0.0;
    for s in &mut scores {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    for (v, s) in values[..len * size].chunks_exact(size).zip(&scores) {
        let weight = s / total;
        for (o, x) in out.iter_mut().zip(v) {
            *o += weight * x;
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
    use candle_core::{Device, Tensor, D};

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

        let len = 37;
        let (keys, vals) = (values(len * d, 5), values(len * d, 6));
        let mut out = vec![0.0; d];
        attend(&x, &keys, &vals, len, 0.125, &mut out);
        let q = Tensor::new(x.as_slice(), &dev)?.reshape((1, d))?;
        let k = Tensor::new(keys.as_slice(), &dev)?.reshape((len, d))?;
        let v = Tensor::new(vals.as_slice(), &dev)?.reshape((len, d))?;
        let scores = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * 0.125)?, D::Minus1)?;
        close(&out, &scores.matmul(&v)?.flatten_all()?.to_vec1()?);

        let mut gate = x.clone();
        silu_mul(&mut gate, &w);
        let expect = (candle_nn::ops::silu(&Tensor::new(x.as_slice(), &dev)?)?
            * Tensor::new(w.as_slice(), &dev)?)?;
        close(&gate, &expect.to_vec1()?);
        Ok(())
    }
}
