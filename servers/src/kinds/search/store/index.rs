//! One collection's vectors in memory, for exact nearest-neighbour search: SQLite holds every
//! vector durably, and this mirror of them is scanned in full for each query (no approximate
//! index, so recall is 1.0). At 100,000 vectors of 384 floats it holds 154 MB and a scan reads
//! each once.

use std::collections::HashMap;

/// How closeness is measured, fixed when a collection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity (vectors are stored at unit length, so it is their dot product).
    Cosine,
    /// The plain dot product.
    Dot,
    /// Euclidean distance (the score is its negative, so higher is closer).
    L2,
}

impl Metric {
    /// The metric's name in requests and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::L2 => "l2",
        }
    }

    /// Reads a metric's name.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "cosine" => Ok(Self::Cosine),
            "dot" => Ok(Self::Dot),
            "l2" => Ok(Self::L2),
            other => Err(format!("unknown metric '{other}': use cosine, dot or l2")),
        }
    }

    /// The vector as stored: unit length for cosine.
    pub fn prepare(self, vector: &mut [f32]) {
        if self == Self::Cosine {
            let norm = dot(vector, vector).sqrt();
            if norm > 0.0 {
                vector.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }

    /// How close `a` is to `b`: higher is closer.
    fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Self::Cosine | Self::Dot => dot(a, b),
            Self::L2 => {
                let mut sums = [0f32; 8];
                for (a, b) in a.chunks(8).zip(b.chunks(8)) {
                    for ((s, x), y) in sums.iter_mut().zip(a).zip(b) {
                        *s += (x - y) * (x - y);
                    }
                }
                -sums.iter().sum::<f32>().sqrt()
            }
        }
    }
}

/// A dot product in eight independent sums, which the compiler turns into SIMD lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a_blocks, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b_blocks, b_rest) = b.split_at(a_blocks.len());
    for (a, b) in a_blocks.chunks_exact(8).zip(b_blocks.chunks_exact(8)) {
        for i in 0..8 {
            sums[i] += a[i] * b[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + rest
}

/// Collections at least this large are scanned on every CPU.
const PARALLEL_FROM: usize = 16_384;

/// A collection's vectors, by document row.
pub struct VectorIndex {
    dimension: usize,
    metric: Metric,
    rows: Vec<i64>,
    vectors: Vec<f32>,
    slots: HashMap<i64, usize>,
}

impl VectorIndex {
    /// An empty index.
    pub fn new(dimension: usize, metric: Metric) -> Self {
        Self {
            dimension,
            metric,
            rows: Vec::new(),
            vectors: Vec::new(),
            slots: HashMap::new(),
        }
    }

    /// Sets row `row`'s vector (already prepared for the metric).
    pub fn put(&mut self, row: i64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dimension);
        match self.slots.get(&row) {
            Some(&slot) => {
                self.vectors[slot * self.dimension..][..self.dimension].copy_from_slice(vector)
            }
            None => {
                self.slots.insert(row, self.rows.len());
                self.rows.push(row);
                self.vectors.extend_from_slice(vector);
            }
        }
    }

    /// Forgets row `row`.
    pub fn remove(&mut self, row: i64) {
        let Some(slot) = self.slots.remove(&row) else {
            return;
        };
        let last = self.rows.len() - 1;
        if slot != last {
            let moved = self.rows[last];
            self.rows[slot] = moved;
            self.slots.insert(moved, slot);
            let (head, tail) = self.vectors.split_at_mut(last * self.dimension);
            head[slot * self.dimension..][..self.dimension].copy_from_slice(tail);
        }
        self.rows.pop();
        self.vectors.truncate(last * self.dimension);
    }

    /// The `k` rows closest to `query` (prepared for the metric), best first, among those
    /// `allowed` lets through; with their scores.
    pub fn nearest(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&std::collections::HashSet<i64>>,
    ) -> Vec<(i64, f32)> {
        // The scan reads every vector once: memory-bound past the caches, so large collections
        // are split across the CPUs, each reading its own part.
        let threads = match self.rows.len() {
            n if n < PARALLEL_FROM => 1,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let per_thread = self.rows.len().div_ceil(threads).max(1);
        let score_part = |rows: &[i64], vectors: &[f32]| -> Vec<(i64, f32)> {
            rows.iter()
                .zip(vectors.chunks_exact(self.dimension))
                .filter(|(row, _)| allowed.is_none_or(|a| a.contains(row)))
                .map(|(&row, vector)| (row, self.metric.score(query, vector)))
                .collect()
        };
        let mut scored: Vec<(i64, f32)> = if threads == 1 {
            score_part(&self.rows, &self.vectors)
        } else {
            std::thread::scope(|scope| {
                let parts: Vec<_> = self
                    .rows
                    .chunks(per_thread)
                    .zip(self.vectors.chunks(per_thread * self.dimension))
                    .map(|(rows, vectors)| scope.spawn(move || score_part(rows, vectors)))
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|part| part.join().unwrap_or_default())
                    .collect()
            })
        };
        let by_score = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1);
        if scored.len() > k {
            scored.select_nth_unstable_by(k, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nearest_and_forgets_removed_rows() {
        let mut index = VectorIndex::new(3, Metric::Cosine);
        for (row, mut v) in [
            (1, [1.0, 0.0, 0.0]),
            (2, [0.0, 1.0, 0.0]),
            (3, [0.7, 0.7, 0.0]),
            (4, [0.0, 0.0, 1.0]),
        ] {
            Metric::Cosine.prepare(&mut v);
            index.put(row, &v);
        }
        let hits = index.nearest(&[1.0, 0.1, 0.0], 2, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3]);
        index.remove(1);
        assert_eq!(index.nearest(&[1.0, 0.0, 0.0], 10, None).len(), 3);
        assert_eq!(index.nearest(&[1.0, 0.1, 0.0], 1, None)[0].0, 3);
        let only_four = [4].into_iter().collect();
        assert_eq!(
            index.nearest(&[1.0, 0.0, 0.0], 5, Some(&only_four)).len(),
            1
        );
    }

    #[test]
    fn the_dot_product_matches_the_plain_sum() {
        let a: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3);
        assert!((Metric::L2.score(&a, &a)).abs() < 1e-6);
    }
}
