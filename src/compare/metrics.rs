//! Error metrics between a reference (float) output and a test (quantized) output, accumulated
//! over samples so that memory does not depend on how many were compared.

use serde::Serialize;

/// Running sums for one tensor compared over many samples.
#[derive(Debug, Clone, Default)]
pub struct ErrorAccumulator {
    n: u64,
    sum_sq_ref: f64,
    sum_sq_err: f64,
    sum_abs_err: f64,
    max_abs_err: f64,
    dot: f64,
    sum_sq_test: f64,
    /// Samples compared for top-k agreement, and how many agreed.
    top1_total: u64,
    top1_agree: u64,
    top5_overlap_sum: f64,
    /// Samples added, and the sum and minimum of their own cosine similarities.
    samples: u64,
    sample_cosine_sum: f64,
    sample_cosine_min: f64,
}

/// Metrics of one tensor, over every sample compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorMetrics {
    /// Number of values compared.
    pub values: u64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Mean absolute difference.
    pub mean_abs: f64,
    /// ‖ref − test‖ / ‖ref‖.
    pub relative: f64,
    /// Mean squared difference.
    pub mse: f64,
    /// Signal-to-quantization-noise ratio in dB: 10·log10(‖ref‖² / ‖ref − test‖²).
    pub sqnr_db: f64,
    /// Cosine similarity of the flattened tensors, all samples together.
    pub cosine: f64,
    /// Mean over samples of each sample's cosine similarity (what "the mean cosine of an
    /// embedding" usually means).
    pub mean_cosine: f64,
    /// Smallest cosine similarity of one sample.
    pub min_cosine: f64,
    /// For class scores: fraction of samples whose arg-max agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// For class scores: mean overlap of the top-5 sets (0..1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5_overlap: Option<f64>,
}

impl ErrorAccumulator {
    /// Adds one sample's values. `classes` is the size of the last axis when the tensor holds
    /// class scores (top-k agreement is computed per row), else `None`.
    pub fn add(&mut self, reference: &[f32], test: &[f32], classes: Option<usize>) {
        let (mut dot, mut rr, mut tt) = (0f64, 0f64, 0f64);
        for (&r, &t) in reference.iter().zip(test) {
            let (r, t) = (r as f64, t as f64);
            let e = r - t;
            self.sum_sq_ref += r * r;
            self.sum_sq_test += t * t;
            self.sum_sq_err += e * e;
            self.sum_abs_err += e.abs();
            self.max_abs_err = self.max_abs_err.max(e.abs());
            self.dot += r * t;
            dot += r * t;
            rr += r * r;
            tt += t * t;
        }
        let sample_cosine = cosine(dot, rr, tt, rr + tt - 2.0 * dot);
        if self.samples == 0 || sample_cosine < self.sample_cosine_min {
            self.sample_cosine_min = sample_cosine;
        }
        self.samples += 1;
        self.sample_cosine_sum += sample_cosine;
        self.n += reference.len().min(test.len()) as u64;
        if let Some(k) = classes.filter(|&k| k >= 2) {
            for (r, t) in reference.chunks_exact(k).zip(test.chunks_exact(k)) {
                self.top1_total += 1;
                if argmax(r) == argmax(t) {
                    self.top1_agree += 1;
                }
                let (tr, tt) = (top_k(r, 5), top_k(t, 5));
                let common = tr.iter().filter(|i| tt.contains(i)).count();
                self.top5_overlap_sum += common as f64 / tr.len().max(1) as f64;
            }
        }
    }

    /// Merges another accumulator (from another thread) into this one.
    pub fn merge(&mut self, other: &ErrorAccumulator) {
        self.n += other.n;
        self.sum_sq_ref += other.sum_sq_ref;
        self.sum_sq_test += other.sum_sq_test;
        self.sum_sq_err += other.sum_sq_err;
        self.sum_abs_err += other.sum_abs_err;
        self.max_abs_err = self.max_abs_err.max(other.max_abs_err);
        self.dot += other.dot;
        self.top1_total += other.top1_total;
        self.top1_agree += other.top1_agree;
        self.top5_overlap_sum += other.top5_overlap_sum;
        if other.samples > 0
            && (self.samples == 0 || other.sample_cosine_min < self.sample_cosine_min)
        {
            self.sample_cosine_min = other.sample_cosine_min;
        }
        self.samples += other.samples;
        self.sample_cosine_sum += other.sample_cosine_sum;
    }

    /// The metrics so far.
    pub fn metrics(&self) -> ErrorMetrics {
        let n = self.n.max(1) as f64;
        let sqnr_db = if self.sum_sq_err == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_sq_ref / self.sum_sq_err).log10()
        };
        let cosine = cosine(self.dot, self.sum_sq_ref, self.sum_sq_test, self.sum_sq_err);
        let relative = if self.sum_sq_ref == 0.0 {
            if self.sum_sq_err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (self.sum_sq_err / self.sum_sq_ref).sqrt()
        };
        ErrorMetrics {
            values: self.n,
            max_abs: self.max_abs_err,
            mean_abs: self.sum_abs_err / n,
            relative,
            mse: self.sum_sq_err / n,
            sqnr_db,
            cosine,
            mean_cosine: if self.samples == 0 {
                1.0
            } else {
                self.sample_cosine_sum / self.samples as f64
            },
            min_cosine: if self.samples == 0 {
                1.0
            } else {
                self.sample_cosine_min
            },
            top1_agreement: (self.top1_total > 0)
                .then(|| self.top1_agree as f64 / self.top1_total as f64),
            top5_overlap: (self.top1_total > 0)
                .then(|| self.top5_overlap_sum / self.top1_total as f64),
        }
    }
}

/// Cosine similarity from the dot product and both squared norms; two zero tensors are
/// identical (1), a zero tensor against a non-zero one is orthogonal (0).
fn cosine(dot: f64, ref_sq: f64, test_sq: f64, err_sq: f64) -> f64 {
    let denom = (ref_sq * test_sq).sqrt();
    if denom == 0.0 {
        if err_sq <= 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        dot / denom
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_tensors_are_perfect() {
        let mut acc = ErrorAccumulator::default();
        acc.add(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0], None);
        let m = acc.metrics();
        assert_eq!(m.max_abs, 0.0);
        assert!(m.sqnr_db.is_infinite());
        assert!((m.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_match_hand_computation() {
        let mut acc = ErrorAccumulator::default();
        acc.add(&[3.0, 4.0], &[3.0, 3.0], None);
        let m = acc.metrics();
        assert_eq!(m.max_abs, 1.0);
        assert_eq!(m.mean_abs, 0.5);
        assert_eq!(m.mse, 0.5);
        assert!((m.relative - 0.2).abs() < 1e-12);
        assert!((m.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-9);
        assert!((m.cosine - 21.0 / (5.0 * 18f64.sqrt())).abs() < 1e-12);
        assert_eq!(m.mean_cosine, m.cosine);
        // A second sample: the mean of per-sample cosines differs from the pooled cosine.
        acc.add(&[1.0, 0.0], &[0.0, 1.0], None);
        let m = acc.metrics();
        assert!((m.mean_cosine - (21.0 / (5.0 * 18f64.sqrt())) / 2.0).abs() < 1e-12);
        assert_eq!(m.min_cosine, 0.0);
    }

    #[test]
    fn merging_equals_adding_everything_at_once() {
        let (a, b) = ([1.0, 2.0, 0.5, 0.1], [1.1, 1.9, 0.4, 0.2]);
        let mut whole = ErrorAccumulator::default();
        whole.add(&a[..2], &b[..2], Some(2));
        whole.add(&a[2..], &b[2..], Some(2));
        let mut left = ErrorAccumulator::default();
        left.add(&a[..2], &b[..2], Some(2));
        let mut right = ErrorAccumulator::default();
        right.add(&a[2..], &b[2..], Some(2));
        left.merge(&right);
        assert_eq!(left.metrics(), whole.metrics());
        assert_eq!(whole.metrics().top1_agreement, Some(1.0));
    }
}
