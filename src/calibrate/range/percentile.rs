//! Percentile ranges: `(-T, T)` with `T` the P-th percentile of |x| for symmetric targets,
//! else the `(100 - P)`-th and P-th percentiles of x.

use super::{QuantTarget, DEFAULT_PERCENTILE};
use crate::calibrate::observer::Histogram;

/// The percentile actually used for a requested one: clamped to `[50, 100]`, NaN meaning
/// [`DEFAULT_PERCENTILE`].
pub fn effective_percentile(percentile: f64) -> f64 {
    if percentile.is_nan() {
        DEFAULT_PERCENTILE
    } else {
        percentile.clamp(50.0, 100.0)
    }
}

/// The unclamped range, or `None` for an empty histogram.
pub(super) fn range(h: &Histogram, percentile: f64, target: &QuantTarget) -> Option<(f64, f64)> {
    let q = effective_percentile(percentile) / 100.0;
    if target.symmetric {
        let t = f64::from(h.abs_quantile(q)?);
        Some((-t, t))
    } else {
        Some((f64::from(h.quantile(1.0 - q)?), f64::from(h.quantile(q)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_sanitised() {
        assert_eq!(effective_percentile(f64::NAN), DEFAULT_PERCENTILE);
        assert_eq!(effective_percentile(120.0), 100.0);
        assert_eq!(effective_percentile(-3.0), 50.0);
        assert_eq!(effective_percentile(99.9), 99.9);
    }

    #[test]
    fn symmetric_uses_the_magnitudes() {
        let values: Vec<f32> = (1..=100)
            .map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) })
            .collect();
        let mut h = Histogram::new(512);
        h.observe(&values);
        let (lo, hi) = range(&h, 90.0, &QuantTarget::S8_SYMMETRIC).unwrap();
        // np.percentile(np.abs(values), 90) == 90.1
        assert!((hi - 90.1).abs() <= f64::from(h.bin_width()), "{hi}");
        assert_eq!(lo, -hi);
        assert_eq!(range(&Histogram::new(8), 99.0, &QuantTarget::U8), None);
    }
}
