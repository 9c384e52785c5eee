//! Value histograms of a float tensor and its quantized counterpart on a common set of bins,
//! for the report's pictures of the worst layers.

use serde::Serialize;

/// Values kept per tensor and side before binning: enough for a smooth picture, bounded
/// whatever the tensor or sample count.
pub const MAX_VALUES: usize = 1 << 18;

/// Bins of a [`Histogram`].
pub const BINS: usize = 64;

/// Counts of the float and the quantized values of one tensor over the same bins.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// The tensor's name in the float model.
    pub tensor: String,
    /// Lower edge of the first bin.
    pub lo: f32,
    /// Upper edge of the last bin.
    pub hi: f32,
    /// Float values per bin.
    pub float_counts: Vec<u64>,
    /// Quantized values per bin.
    pub quantized_counts: Vec<u64>,
    /// Values of each side counted (the first samples' values, up to [`MAX_VALUES`]).
    pub values: usize,
}

/// Collects up to [`MAX_VALUES`] values of both sides of one tensor, then bins them.
#[derive(Debug, Clone, Default)]
pub struct HistogramBuilder {
    float: Vec<f32>,
    quantized: Vec<f32>,
}

impl HistogramBuilder {
    /// Whether no more values are wanted.
    pub fn is_full(&self) -> bool {
        self.float.len() >= MAX_VALUES
    }

    /// Adds one sample's values of the float and the quantized tensor (same length), up to
    /// the cap. Non-finite values are dropped: they have no bin.
    pub fn add(&mut self, float: &[f32], quantized: &[f32]) {
        let room = MAX_VALUES.saturating_sub(self.float.len());
        for (&f, &q) in float.iter().zip(quantized).take(room) {
            if f.is_finite() && q.is_finite() {
                self.float.push(f);
                self.quantized.push(q);
            }
        }
    }

    /// The histogram over the range of both sides' values.
    pub fn finish(self, tensor: String) -> Histogram {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in self.float.iter().chain(&self.quantized) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (0.0, 0.0);
        }
        if hi <= lo {
            // A constant tensor: one visible bin around its value.
            hi = lo + lo.abs().max(1.0) * 1e-3;
        }
        let width = (hi - lo) as f64 / BINS as f64;
        let bin = |v: f32| (((v - lo) as f64 / width) as usize).min(BINS - 1);
        let mut float_counts = vec![0u64; BINS];
        let mut quantized_counts = vec![0u64; BINS];
        for &v in &self.float {
            float_counts[bin(v)] += 1;
        }
        for &v in &self.quantized {
            quantized_counts[bin(v)] += 1;
        }
        Histogram {
            tensor,
            lo,
            hi,
            float_counts,
            quantized_counts,
            values: self.float.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_both_sides_and_count_every_value() {
        let mut b = HistogramBuilder::default();
        b.add(&[0.0, 1.0, 2.0, 4.0], &[0.0, 1.0, 2.0, 3.5]);
        let h = b.finish("t".into());
        assert_eq!((h.lo, h.hi), (0.0, 4.0));
        assert_eq!(h.float_counts.iter().sum::<u64>(), 4);
        assert_eq!(h.quantized_counts.iter().sum::<u64>(), 4);
        assert_eq!(
            h.float_counts[BINS - 1],
            1,
            "the maximum falls in the last bin"
        );
        assert_eq!(h.quantized_counts[BINS - 1], 0);
        assert_eq!(h.quantized_counts[56], 1, "3.5 / (4 / 64) = bin 56");
    }

    #[test]
    fn values_are_capped_and_non_finite_dropped() {
        let mut b = HistogramBuilder::default();
        let big = vec![1.0f32; MAX_VALUES + 10];
        b.add(&[f32::NAN, 2.0], &[1.0, f32::INFINITY]);
        b.add(&big, &big);
        assert!(b.is_full());
        let h = b.finish("t".into());
        assert_eq!(h.values, MAX_VALUES);
        assert!(h.hi > h.lo);
    }
}
