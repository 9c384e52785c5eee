//! Turning a tensor's observed statistics into the range it is quantized over.
//!
//! - **MinMax**: the exact `(min, max)` of the finite values.
//! - **Percentile P** (default 99.999, clamped to `[50, 100]`): for a symmetric target
//!   `T = P-th percentile of |x|` and the range `(-T, T)`; otherwise
//!   `((100 - P)-th percentile of x, P-th percentile of x)`, each tail losing `(100 - P)` % of
//!   the mass. Percentiles follow `np.percentile` (linear interpolation) within one bin width.
//! - **Entropy**: TensorRT's KL-divergence threshold search on the histogram of |x| (see
//!   [`kl_objective`] for the exact definition); range `(-T, T)`.
//! - **MSE**: the range minimising the expected squared error of fake quantization
//!   ([`mse_objective`]) with the target's scale and zero point ([`scale_zero_point`]).
//!
//! Every result is then clamped to the data (`(max(min, lo), min(max, hi))`) and made usable by
//! [`compute_range`]'s rules for degenerate tensors.

mod entropy;
mod mse;
mod percentile;

pub use entropy::{kl_levels, kl_objective};
pub use mse::mse_objective;
pub use percentile::effective_percentile;

use super::observer::{Histogram, MinMax};
use crate::{Error, Result};

/// Default `--percentile`.
pub const DEFAULT_PERCENTILE: f64 = 99.999;

/// Narrowest range returned: its scale stays a normal f32 even at 16 bits.
pub const MIN_RANGE_WIDTH: f32 = 1e-30;

/// An all-zero tensor gets `(-ZERO_RANGE_HALF_WIDTH, ZERO_RANGE_HALF_WIDTH)`.
pub const ZERO_RANGE_HALF_WIDTH: f32 = 1e-4;

/// Range ends are clamped to ±`f32::MAX / 2`, so that `hi - lo` is finite in f32.
const RANGE_LIMIT: f32 = f32::MAX / 2.0;

/// How a tensor's range is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum RangeMethod {
    /// The exact minimum and maximum.
    #[serde(rename = "minmax")]
    MinMax,
    /// Clip each tail (or the tail of |x| for symmetric targets) to a percentile.
    Percentile {
        /// The percentile in `[50, 100]`, e.g. 99.999.
        percentile: f64,
    },
    /// TensorRT's KL-divergence threshold.
    Entropy,
    /// The range minimising the expected squared quantization error.
    Mse,
}

impl RangeMethod {
    /// Whether the method needs a [`Histogram`] (all but MinMax).
    pub fn needs_histogram(&self) -> bool {
        !matches!(self, RangeMethod::MinMax)
    }

    /// The name used on the command line and in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            RangeMethod::MinMax => "minmax",
            RangeMethod::Percentile { .. } => "percentile",
            RangeMethod::Entropy => "entropy",
            RangeMethod::Mse => "mse",
        }
    }
}

/// An unknown `--method` name.
#[derive(Debug, thiserror::Error)]
#[error("unknown range method '{0}' (expected minmax, percentile, entropy or mse)")]
pub struct UnknownRangeMethod(pub String);

impl std::str::FromStr for RangeMethod {
    type Err = UnknownRangeMethod;

    /// `minmax`, `percentile` (at [`DEFAULT_PERCENTILE`]), `entropy` or `mse`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minmax" => Ok(RangeMethod::MinMax),
            "percentile" => Ok(RangeMethod::Percentile {
                percentile: DEFAULT_PERCENTILE,
            }),
            "entropy" => Ok(RangeMethod::Entropy),
            "mse" => Ok(RangeMethod::Mse),
            other => Err(UnknownRangeMethod(other.to_string())),
        }
    }
}

/// The integer type a range is mapped onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantTarget {
    /// Bit width; clamped to `[2, 16]` by [`qmin`](Self::qmin) and [`qmax`](Self::qmax).
    pub bits: u32,
    /// Signed integers.
    pub signed: bool,
    /// Symmetric range around zero (signed: zero point 0; unsigned: zero point the middle).
    pub symmetric: bool,
}

impl QuantTarget {
    /// uint8, asymmetric: the activation default.
    pub const U8: Self = QuantTarget {
        bits: 8,
        signed: false,
        symmetric: false,
    };
    /// int8, symmetric over `[-127, 127]`.
    pub const S8_SYMMETRIC: Self = QuantTarget {
        bits: 8,
        signed: true,
        symmetric: true,
    };

    pub(crate) fn effective_bits(&self) -> u32 {
        self.bits.clamp(2, 16)
    }

    /// Lowest quantized level. Signed symmetric targets use the restricted range
    /// `-(2^(bits-1) - 1)` (onnxruntime's convention), so that `±T` map to `±qmax`.
    pub fn qmin(&self) -> i32 {
        let half = 1i32 << (self.effective_bits() - 1);
        match (self.signed, self.symmetric) {
            (false, _) => 0,
            (true, false) => -half,
            (true, true) => -(half - 1),
        }
    }

    /// Highest quantized level.
    pub fn qmax(&self) -> i32 {
        let bits = self.effective_bits();
        if self.signed {
            (1 << (bits - 1)) - 1
        } else {
            (1 << bits) - 1
        }
    }
}

/// Round half to even, for |x| < 2^51 (the hardware rounding mode does the work).
pub(crate) fn round_half_even(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    if x.abs() < 2_251_799_813_685_248.0 {
        (x + MAGIC) - MAGIC
    } else {
        x
    }
}

/// The scale and zero point a range maps to (onnxruntime's `compute_scale_zp`): the range is
/// widened to include 0 and, for symmetric targets, made symmetric (`±max(|lo|, |hi|)`);
/// `scale = (hi - lo) / (qmax - qmin)` rounded to f32 (1 when zero, at least
/// `f32::MIN_POSITIVE`); the zero point is `round((qmin + qmax) / 2)` when symmetric, else
/// `round(qmin - lo / scale)` clamped to `[qmin, qmax]`, rounding half to even. The MSE objective
/// assumes the quantizer uses exactly these.
pub fn scale_zero_point(lo: f32, hi: f32, target: &QuantTarget) -> (f32, i32) {
    let mut lo = f64::from(lo).min(0.0);
    let mut hi = f64::from(hi).max(0.0);
    if target.symmetric {
        let m = (-lo).max(hi);
        (lo, hi) = (-m, m);
    }
    let (qmin, qmax) = (f64::from(target.qmin()), f64::from(target.qmax()));
    let scale = super::observer::to_f32((hi - lo) / (qmax - qmin));
    let scale = if scale == 0.0 || scale.is_nan() {
        1.0
    } else {
        scale.max(f32::MIN_POSITIVE)
    };
    let zero_point = if target.symmetric {
        round_half_even((qmin + qmax) / 2.0)
    } else {
        round_half_even(qmin - lo / f64::from(scale))
    };
    (scale, zero_point.clamp(qmin, qmax) as i32)
}

/// The calibrated range of one tensor: always finite with min < max (degenerate tensors widened
/// around their value, 0 kept inside when it was).
///
/// MinMax reads `minmax`; the other methods read everything from `histogram` (which keeps its
/// own exact min and max). The method's range is clamped to the data and to ±`f32::MAX / 2`.
/// If it is then narrower than [`MIN_RANGE_WIDTH`] (a constant tensor, or a percentile that
/// collapsed onto one value), the data's full range is used instead; if that is still too
/// narrow, the range becomes `(min(0, lo), max(0, hi))` widened to [`MIN_RANGE_WIDTH`] (a constant
/// `c` gives `(0, c)` or `(c, 0)`), and an all-zero tensor gets ±[`ZERO_RANGE_HALF_WIDTH`].
///
/// Errors when a histogram method gets no histogram, or when the tensor saw no finite value.
pub fn compute_range(
    method: &RangeMethod,
    minmax: &MinMax,
    histogram: Option<&Histogram>,
    target: &QuantTarget,
) -> Result<(f32, f32)> {
    let stats = match histogram {
        Some(h) if method.needs_histogram() => h.stats(),
        None if method.needs_histogram() => {
            return Err(Error::Model(format!(
                "range method '{}' needs a histogram, but none was collected",
                method.name()
            )))
        }
        _ => minmax,
    };
    let (min, max) = (stats.min, stats.max);
    if stats.count == 0 {
        return Err(Error::Model(format!(
            "no finite value was observed ({} NaN or infinite), so no range can be calibrated",
            stats.non_finite
        )));
    }
    if !(min.is_finite() && max.is_finite() && min <= max) {
        return Err(Error::Model(format!(
            "corrupt statistics: min {min}, max {max}"
        )));
    }
    let range = match (method, histogram) {
        (_, _) if min == max => None,
        (RangeMethod::MinMax, _) | (_, None) => None,
        (RangeMethod::Percentile { percentile }, Some(h)) => {
            percentile::range(h, *percentile, target)
        }
        (RangeMethod::Entropy, Some(h)) => entropy::range(h, target),
        (RangeMethod::Mse, Some(h)) => mse::range(h, target),
    };
    let (lo, hi) = range.unwrap_or((f64::from(min), f64::from(max)));
    Ok(finalize(lo, hi, min, max))
}

/// Share of the values, at each end, that the outlier guard takes as the edge of the bulk.
pub const OUTLIER_SHARE: f64 = 1e-3;

/// How many times wider than its bulk a range must be before the guard clips it: 8x wastes 3
/// of uint8's 8 bits on the few values beyond the bulk.
pub const OUTLIER_STRETCH: f64 = 8.0;

/// The outlier guard: when the values beyond the bulk ([`OUTLIER_SHARE`] of them at either
/// end) stretch the calibrated range `range` more than [`OUTLIER_STRETCH`] times the bulk's
/// width, the range clipped on the stretched side(s) to twice the bulk's edge (the margin
/// keeps the bulk's own tail); `None` otherwise. Both ranges include zero, as the quantization
/// parameters do. A transformer's massive activations (one channel of the delimiter tokens,
/// 20x every other value: a share of the values that depends on the sentence lengths) or a
/// sentinel on a few positions would otherwise set the scale, and every other value would
/// round to a few steps.
pub fn outlier_guard(range: (f32, f32), histogram: &Histogram) -> Option<(f32, f32)> {
    let bulk_lo = f64::from(histogram.quantile(OUTLIER_SHARE)?).min(0.0);
    let bulk_hi = f64::from(histogram.quantile(1.0 - OUTLIER_SHARE)?).max(0.0);
    let (lo, hi) = (f64::from(range.0).min(0.0), f64::from(range.1).max(0.0));
    let bulk = bulk_hi - bulk_lo;
    if bulk <= 0.0 || hi - lo <= OUTLIER_STRETCH * bulk {
        return None;
    }
    let (lo, hi) = (lo.max(2.0 * bulk_lo), hi.min(2.0 * bulk_hi));
    Some((lo as f32, hi as f32))
}

/// Clamps a method's range to the data and applies the degenerate-tensor rules.
fn finalize(lo: f64, hi: f64, min: f32, max: f32) -> (f32, f32) {
    let min = f64::from(min.clamp(-RANGE_LIMIT, RANGE_LIMIT));
    let max = f64::from(max.clamp(-RANGE_LIMIT, RANGE_LIMIT));
    let width = f64::from(MIN_RANGE_WIDTH);
    let usable = |lo: f64, hi: f64| hi - lo >= width;
    // f64::max/min drop a NaN end in favour of the data's.
    let (mut lo, mut hi) = (lo.max(min), hi.min(max));
    if !usable(lo, hi) {
        (lo, hi) = (min, max);
    }
    if !usable(lo, hi) {
        (lo, hi) = if lo == 0.0 && hi == 0.0 {
            let half = f64::from(ZERO_RANGE_HALF_WIDTH);
            (-half, half)
        } else {
            let lo = lo.min(0.0);
            let hi = hi.max(0.0);
            (
                if lo < 0.0 { lo.min(-width) } else { 0.0 },
                if hi > 0.0 { hi.max(width) } else { 0.0 },
            )
        };
    }
    let (lo, hi) = (lo as f32, hi as f32);
    debug_assert!(lo.is_finite() && hi.is_finite() && lo < hi, "({lo}, {hi})");
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f32]) -> (MinMax, Histogram) {
        let mut m = MinMax::new();
        m.observe(values);
        let mut h = Histogram::new(256);
        h.observe(values);
        (m, h)
    }

    #[test]
    fn the_outlier_guard_clips_a_handful_of_far_values_only() {
        // 20 000 values in [-1, 1] and 10 at 200 (a massive activation on a few tokens).
        let bulk: Vec<f32> = (0..20_000).map(|i| (i as f32 / 10_000.0) - 1.0).collect();
        let mut values = bulk.clone();
        values.extend([200.0; 10]);
        let (m, h) = stats(&values);
        let (lo, hi) = outlier_guard((m.min, m.max), &h).expect("clipped");
        // The low side is not stretched and keeps its extreme; the high one gets twice the
        // bulk's edge.
        assert_eq!(lo, -1.0);
        assert!((1.9..=2.1).contains(&hi), "{hi}");
        // Without the far values, or with a tail of 1 % (not a handful), nothing is clipped.
        let (m, h) = stats(&bulk);
        assert_eq!(outlier_guard((m.min, m.max), &h), None);
        let mut tail = bulk.clone();
        tail.extend([200.0; 200]);
        let (m, h) = stats(&tail);
        assert_eq!(outlier_guard((m.min, m.max), &h), None);
        // A wide but even spread is not an outlier either.
        let even: Vec<f32> = (0..20_000).map(|i| i as f32 / 100.0).collect();
        let (m, h) = stats(&even);
        assert_eq!(outlier_guard((m.min, m.max), &h), None);
    }

    fn all_methods() -> [RangeMethod; 5] {
        [
            RangeMethod::MinMax,
            RangeMethod::Percentile { percentile: 99.0 },
            RangeMethod::Percentile {
                percentile: f64::NAN,
            },
            RangeMethod::Entropy,
            RangeMethod::Mse,
        ]
    }

    const TARGETS: [QuantTarget; 4] = [
        QuantTarget::U8,
        QuantTarget::S8_SYMMETRIC,
        QuantTarget {
            bits: 4,
            signed: true,
            symmetric: false,
        },
        QuantTarget {
            bits: 99,
            signed: false,
            symmetric: true,
        },
    ];

    #[test]
    fn qmin_qmax() {
        assert_eq!((QuantTarget::U8.qmin(), QuantTarget::U8.qmax()), (0, 255));
        let s8 = QuantTarget::S8_SYMMETRIC;
        assert_eq!((s8.qmin(), s8.qmax()), (-127, 127));
        let s8_asym = QuantTarget {
            symmetric: false,
            ..s8
        };
        assert_eq!((s8_asym.qmin(), s8_asym.qmax()), (-128, 127));
        let u16 = QuantTarget {
            bits: 16,
            ..QuantTarget::U8
        };
        assert_eq!(u16.qmax(), 65535);
        let clamped = QuantTarget { bits: 0, ..s8_asym };
        assert_eq!((clamped.qmin(), clamped.qmax()), (-2, 1));
        let wide = QuantTarget {
            bits: 64,
            ..QuantTarget::U8
        };
        assert_eq!(wide.qmax(), 65535);
    }

    #[test]
    fn scale_and_zero_point_follow_onnxruntime() {
        assert_eq!(
            scale_zero_point(-1.0, 3.0, &QuantTarget::U8),
            (4.0 / 255.0, 64)
        );
        assert_eq!(
            scale_zero_point(2.0, 3.0, &QuantTarget::U8),
            (3.0 / 255.0, 0)
        );
        assert_eq!(
            scale_zero_point(-1.0, 2.54, &QuantTarget::S8_SYMMETRIC),
            (0.02, 0)
        );
        let u8_sym = QuantTarget {
            symmetric: true,
            ..QuantTarget::U8
        };
        assert_eq!(scale_zero_point(-1.0, 0.5, &u8_sym).1, 128);
        assert_eq!(scale_zero_point(0.0, 0.0, &QuantTarget::U8), (1.0, 0));
        let (s, z) = scale_zero_point(-f32::MAX, f32::MAX, &QuantTarget::U8);
        assert!(s.is_finite() && (0..=255).contains(&z));
    }

    #[test]
    fn method_names_parse_and_serialize() {
        for name in ["minmax", "percentile", "entropy", "mse"] {
            let m: RangeMethod = name.parse().unwrap();
            assert_eq!(m.name(), name);
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json["method"], name);
            assert_eq!(serde_json::from_value::<RangeMethod>(json).unwrap(), m);
        }
        assert_eq!(
            "percentile".parse::<RangeMethod>().unwrap(),
            RangeMethod::Percentile { percentile: 99.999 }
        );
        let err = "kl".parse::<RangeMethod>().unwrap_err().to_string();
        assert!(err.contains("'kl'"), "{err}");
        assert!(!RangeMethod::MinMax.needs_histogram() && RangeMethod::Mse.needs_histogram());
    }

    #[test]
    fn errors_name_the_problem() {
        let (m, _) = stats(&[1.0, 2.0]);
        let err = compute_range(&RangeMethod::Entropy, &m, None, &QuantTarget::U8).unwrap_err();
        assert!(err.to_string().contains("needs a histogram"), "{err}");
        let (m, h) = stats(&[f32::NAN, f32::INFINITY]);
        for method in all_methods() {
            let err = compute_range(&method, &m, Some(&h), &QuantTarget::U8).unwrap_err();
            assert!(err.to_string().contains("no finite value"), "{err}");
        }
        let corrupt = MinMax {
            min: f32::NAN,
            max: 1.0,
            count: 3,
            non_finite: 0,
        };
        assert!(compute_range(&RangeMethod::MinMax, &corrupt, None, &QuantTarget::U8).is_err());
    }

    #[test]
    fn degenerate_tensors_get_a_usable_range() {
        let cases: &[(&[f32], (f32, f32))] = &[
            (&[0.0; 5], (-1e-4, 1e-4)),
            (&[-0.0, 0.0], (-1e-4, 1e-4)),
            (&[3.0], (0.0, 3.0)),
            (&[-2.5; 4], (-2.5, 0.0)),
            (&[1e-40, f32::NAN], (0.0, 1e-30)),
            (&[f32::MAX; 3], (0.0, f32::MAX / 2.0)),
            (&[-f32::MAX, f32::MAX], (-f32::MAX / 2.0, f32::MAX / 2.0)),
        ];
        for &(values, expected) in cases {
            let (m, h) = stats(values);
            for method in all_methods() {
                for target in &TARGETS {
                    let got = compute_range(&method, &m, Some(&h), target).unwrap();
                    assert_eq!(got, expected, "{values:?} {method:?} {target:?}");
                }
            }
        }
    }

    #[test]
    fn every_range_is_finite_ordered_and_inside_the_data() {
        let mut inputs: Vec<Vec<f32>> = vec![
            vec![1e-45, 2e-45, 3e-45],
            vec![-1e30, 1e-30, 1e30],
            vec![5.0, 5.000001],
            vec![0.0, 0.0, 0.0, 1.0],
            vec![-3.0, 1e-38, f32::NEG_INFINITY],
        ];
        inputs.push(
            (0..1000)
                .map(|i| (i as f32 * 0.37).sin() * (i % 7) as f32)
                .collect(),
        );
        inputs.push(
            (0..1000)
                .map(|i| if i % 100 == 0 { 1e6 } else { 0.0 })
                .collect(),
        );
        for values in &inputs {
            let (m, h) = stats(values);
            for method in all_methods() {
                for target in &TARGETS {
                    let (lo, hi) = compute_range(&method, &m, Some(&h), target).unwrap();
                    assert!(
                        lo.is_finite() && hi.is_finite() && lo < hi,
                        "{values:?} {method:?}"
                    );
                    let (s, _) = scale_zero_point(lo, hi, target);
                    assert!(s.is_normal(), "{values:?} {method:?} scale {s}");
                    if f64::from(m.max) - f64::from(m.min) >= f64::from(MIN_RANGE_WIDTH) {
                        assert!(
                            lo >= m.min && hi <= m.max,
                            "{values:?} {method:?} ({lo}, {hi})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn random_bit_patterns_never_break_the_contract() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let methods = all_methods();
        for case in 0..200 {
            let n = (next() % 200) as usize;
            let values: Vec<f32> = (0..n)
                .map(|_| match next() % 3 {
                    0 => f32::from_bits(next() as u32),
                    1 => (next() % 5) as f32 - 2.0,
                    _ => f32::from_bits((next() as u32) & 0x807f_ffff), // subnormal or zero
                })
                .collect();
            let mut m = MinMax::new();
            let mut h = Histogram::new([2, 7, 64, 2048][case % 4]);
            for chunk in values.chunks(1 + (next() % 40) as usize) {
                m.observe(chunk);
                h.observe(chunk);
            }
            for method in methods {
                for target in &TARGETS {
                    match compute_range(&method, &m, Some(&h), target) {
                        Ok((lo, hi)) => assert!(lo.is_finite() && hi.is_finite() && lo < hi),
                        Err(e) => assert!(m.is_empty(), "{e}: {values:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn percentile_clips_the_tails() {
        let values: Vec<f32> = (0..=1000).map(|i| i as f32 - 200.0).collect();
        let (m, h) = stats(&values);
        let method = RangeMethod::Percentile { percentile: 99.0 };
        let (lo, hi) = compute_range(&method, &m, Some(&h), &QuantTarget::U8).unwrap();
        let w = h.bin_width();
        assert!(
            (lo - -190.0).abs() <= w && (hi - 790.0).abs() <= w,
            "({lo}, {hi})"
        );
        let (lo, hi) = compute_range(&method, &m, Some(&h), &QuantTarget::S8_SYMMETRIC).unwrap();
        assert_eq!(lo, -200.0);
        assert!((hi - 790.0).abs() <= w, "{hi}");
        let full = RangeMethod::Percentile { percentile: 100.0 };
        assert_eq!(
            compute_range(&full, &m, Some(&h), &QuantTarget::U8).unwrap(),
            (-200.0, 800.0)
        );
    }

    #[test]
    fn collapsed_percentile_falls_back_to_the_data_range() {
        let mut values = vec![0.0f32; 1_000_000];
        values[0] = 2.0;
        let (m, h) = stats(&values);
        let method = RangeMethod::Percentile { percentile: 99.9 };
        assert_eq!(
            compute_range(&method, &m, Some(&h), &QuantTarget::U8).unwrap(),
            (0.0, 2.0)
        );
    }
}
