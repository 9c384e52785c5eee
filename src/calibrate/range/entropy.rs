//! Entropy calibration: TensorRT's KL-divergence threshold search (Migacz, "8-bit Inference
//! with TensorRT", 2017), as implemented by MXNet and onnxruntime, computed exactly. The
//! definition is on [`kl_objective`].

use super::QuantTarget;
use crate::calibrate::observer::{pow2, Histogram};

/// The number of quantization levels the KL search merges into, for `histogram`'s data and
/// `target`.
pub fn kl_levels(histogram: &Histogram, target: &QuantTarget) -> usize {
    let bits = target.effective_bits();
    let has_negative = histogram.stats().count > 0 && histogram.stats().min < 0.0;
    if target.signed || has_negative {
        1 << (bits - 1)
    } else {
        1 << bits
    }
}

/// The |x| histogram the search runs on.
struct AbsHistogram {
    counts: Vec<u64>,
    width: f64,
}

fn abs_histogram(h: &Histogram) -> Option<AbsHistogram> {
    let folded = h.folded(true)?;
    let end = folded.first + folded.counts.len() as i64; // one past the last (non-empty) bin
    let limit = 2 * h.bins() as i64;
    let mut shift = 0;
    while ((end - 1) >> shift) + 1 >= limit {
        shift += 1;
    }
    let mut counts = vec![0u64; (((end - 1) >> shift) + 1) as usize];
    for (j, &c) in folded.counts.iter().enumerate() {
        counts[((folded.first + j as i64) >> shift) as usize] += c;
    }
    Some(AbsHistogram {
        counts,
        width: pow2(folded.exponent + shift),
    })
}

/// Prefix sums that make each candidate O(levels).
struct Prefix {
    mass: Vec<f64>,
    mass_log_mass: Vec<f64>,
    non_zero: Vec<u32>,
}

fn x_log_x(x: f64) -> f64 {
    if x > 0.0 {
        x * x.ln()
    } else {
        0.0
    }
}

impl Prefix {
    fn new(counts: &[u64]) -> Self {
        let n = counts.len();
        let mut p = Prefix {
            mass: Vec::with_capacity(n + 1),
            mass_log_mass: Vec::with_capacity(n + 1),
            non_zero: Vec::with_capacity(n + 1),
        };
        let (mut m, mut l, mut z) = (0.0, 0.0, 0u32);
        p.mass.push(m);
        p.mass_log_mass.push(l);
        p.non_zero.push(z);
        for &c in counts {
            let c = c as f64;
            m += c;
            l += x_log_x(c);
            z += u32::from(c > 0.0);
            p.mass.push(m);
            p.mass_log_mass.push(l);
            p.non_zero.push(z);
        }
        p
    }

    /// KL(P‖Q) for candidate `i` (`levels <= i <= n`), as defined on [`kl_objective`].
    fn divergence(&self, counts: &[u64], i: usize, levels: usize) -> f64 {
        let total = self.mass[counts.len()];
        let kept = self.mass[i];
        if kept <= 0.0 {
            return f64::INFINITY;
        }
        let clipped = total - kept;
        // Σ_j P_j ln(P_j / Q_j), level by level: Σ P ln P - (Σ P) ln(mass / non_zero).
        let mut sum = 0.0;
        for level in 0..levels {
            let start = (level * i).div_ceil(levels);
            let end = ((level + 1) * i).div_ceil(levels);
            let mass = self.mass[end] - self.mass[start];
            let mut p_mass = mass;
            let mut p_log_p = self.mass_log_mass[end] - self.mass_log_mass[start];
            let mut non_zero = self.non_zero[end] - self.non_zero[start];
            if level == levels - 1 && clipped > 0.0 {
                let last = counts[i - 1] as f64;
                p_log_p += x_log_x(last + clipped) - x_log_x(last);
                non_zero += u32::from(last == 0.0);
                p_mass += clipped;
            }
            if p_mass == 0.0 {
                continue;
            }
            if mass == 0.0 {
                return f64::INFINITY;
            }
            sum += p_log_p - p_mass * (mass / f64::from(non_zero)).ln();
        }
        // P is normalised by `total`, Q by `kept`.
        (sum / total + (kept / total).ln()).max(0.0)
    }
}

/// The KL divergence of the candidate whose threshold is the first at or above `threshold`,
/// clamped to the searched candidates; `None` when the histogram has no non-zero value or there
/// is nothing to search (`levels > n`). The entropy method picks the candidate minimising it.
///
/// **The histogram** `h` is that of |x| over the non-zero values: exact zeros are left out, since
/// zero is exactly representable whatever the threshold (this replaces pytorch-quantization's
/// `bins[0] = bins[1]` fix for ReLU outputs). It is the observer's power-of-two grid folded at zero (a negative `x`
/// in slot `k < 0` goes to bin `-k - 1`, exact), its bins then merged in pairs until there are
/// fewer than `2 * bins` of them: `n` bins of width `w`, with `bins <= n < 2 * bins` (2048 to
/// 4095 by default) covering `[0, n w] ⊇ [0, max|x|]`.
///
/// **For each candidate** `i` in `levels..=n` (threshold `T = i w`):
/// - `P = h[..i]` with the clipped mass `Σ h[i..]` added to `P[i-1]`;
/// - bin `j < i` belongs to level `⌊j · levels / i⌋`; `Q` spreads each level's *unclipped* mass
///   `Σ h[j]` evenly over the bins of the level where `P` is non-zero;
/// - `KL(P / ΣP ‖ Q / ΣQ)`, infinite when some `P[j] > 0` has `Q[j] = 0` (the clipped mass falls
///   in a level with no data).
///
/// The threshold is the candidate with the smallest divergence (the largest `i` on ties).
/// `levels` is `2^(bits-1)` for signed targets or tensors with negative values, else `2^bits`;
/// with `levels > n` there is nothing to search and `T = n w`.
///
/// Building `Q` from `P` (clipped mass included) instead would make the divergence exactly 0 at
/// `i = levels`, so the search would always clip as hard as possible: the unclipped `Q` is what
/// makes clipping cost something.
pub fn kl_objective(histogram: &Histogram, threshold: f32, target: &QuantTarget) -> Option<f64> {
    let abs = abs_histogram(histogram)?;
    let levels = kl_levels(histogram, target);
    let n = abs.counts.len();
    if levels > n {
        return None;
    }
    let i = (f64::from(threshold) / abs.width).ceil();
    let i = if i.is_nan() {
        n
    } else {
        i.clamp(levels as f64, n as f64) as usize
    };
    Some(Prefix::new(&abs.counts).divergence(&abs.counts, i, levels))
}

/// `(-T, T)` for the threshold of smallest divergence, or `None` without a non-zero value.
pub(super) fn range(h: &Histogram, target: &QuantTarget) -> Option<(f64, f64)> {
    let abs = abs_histogram(h)?;
    let levels = kl_levels(h, target);
    let n = abs.counts.len();
    let mut best = (f64::INFINITY, n);
    if levels <= n {
        let prefix = Prefix::new(&abs.counts);
        for i in levels..=n {
            let kl = prefix.divergence(&abs.counts, i, levels);
            if kl <= best.0 {
                best = (kl, i);
            }
        }
    }
    let t = best.1 as f64 * abs.width;
    Some((-t, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written out bin by bin.
    fn divergence_by_definition(h: &[u64], i: usize, levels: usize) -> f64 {
        let mut p: Vec<f64> = h[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += h[i..].iter().sum::<u64>() as f64;
        let level = |j: usize| j * levels / i;
        let mut mass = vec![0.0; levels];
        let mut non_zero = vec![0.0; levels];
        for j in 0..i {
            mass[level(j)] += h[j] as f64;
            non_zero[level(j)] += f64::from(u8::from(p[j] > 0.0));
        }
        let q: Vec<f64> = (0..i)
            .map(|j| {
                if p[j] > 0.0 {
                    mass[level(j)] / non_zero[level(j)]
                } else {
                    0.0
                }
            })
            .collect();
        let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let mut kl = 0.0;
        for j in 0..i {
            if p[j] > 0.0 {
                if q[j] == 0.0 {
                    return f64::INFINITY;
                }
                kl += p[j] / sp * ((p[j] / sp) / (q[j] / sq)).ln();
            }
        }
        kl
    }

    #[test]
    fn prefix_sums_match_the_definition() {
        let mut state = 7u64;
        let counts: Vec<u64> = (0..300)
            .map(|j| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let noise = (state >> 60) as f64;
                if j > 200 && !state.is_multiple_of(3) {
                    0
                } else {
                    (1000.0 * (-(j as f64) / 40.0).exp() + noise) as u64
                }
            })
            .collect();
        let prefix = Prefix::new(&counts);
        for levels in [2, 16, 128] {
            for i in levels..=counts.len() {
                let fast = prefix.divergence(&counts, i, levels);
                let slow = divergence_by_definition(&counts, i, levels);
                assert!(
                    (fast == slow) || (fast - slow).abs() <= 1e-9 * slow.abs().max(1e-6),
                    "levels {levels} i {i}: {fast} vs {slow}"
                );
            }
        }
        // One level per bin: only the clipping costs anything.
        assert_eq!(prefix.divergence(&counts, counts.len(), counts.len()), 0.0);
    }

    #[test]
    fn long_tail_is_clipped_and_levels_follow_the_target() {
        // Laplace-distributed values (|x| up to about 10) and three far outliers.
        let mut values: Vec<f32> = (1..20_000)
            .map(|i| {
                let u = (i as f64 * 0.618_034).fract();
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                (-u.ln() * sign) as f32
            })
            .collect();
        values.extend([40.0, -45.0, 50.0]);
        let mut h = Histogram::new(2048);
        h.observe(&values);
        let (lo, hi) = range(&h, &QuantTarget::S8_SYMMETRIC).unwrap();
        assert!(hi < 40.0 && lo > -45.0 && hi >= 2.0, "({lo}, {hi})");
        assert_eq!(kl_levels(&h, &QuantTarget::U8), 128);
        let mut relu = Histogram::new(2048);
        relu.observe(&[0.0, 1.0, 2.0]);
        assert_eq!(kl_levels(&relu, &QuantTarget::U8), 256);
        assert_eq!(kl_levels(&relu, &QuantTarget::S8_SYMMETRIC), 128);
        let objective = kl_objective(&h, hi as f32, &QuantTarget::S8_SYMMETRIC).unwrap();
        let at_max = kl_objective(&h, 50.0, &QuantTarget::S8_SYMMETRIC).unwrap();
        assert!(objective <= at_max, "{objective} > {at_max}");
    }

    #[test]
    fn grid_has_between_bins_and_twice_bins_bins() {
        for values in [
            vec![-1.0f32, 1.0],
            vec![0.0, 1.0],
            vec![1000.0, 1000.5],
            vec![-3e38, 1e-3],
        ] {
            for bins in [2, 100, 2048] {
                let mut h = Histogram::new(bins);
                h.observe(&values);
                let abs = abs_histogram(&h).unwrap();
                let n = abs.counts.len();
                assert!((bins..2 * bins).contains(&n), "{values:?} bins {bins}: {n}");
                let max_abs = values
                    .iter()
                    .fold(0.0f64, |m, &x| m.max(f64::from(x.abs())));
                assert!(n as f64 * abs.width >= max_abs && (n - 1) as f64 * abs.width <= max_abs);
            }
        }
        let mut zeros = Histogram::new(64);
        zeros.observe(&[0.0; 4]);
        assert!(abs_histogram(&zeros).is_none());
        assert_eq!(kl_objective(&zeros, 1.0, &QuantTarget::U8), None);
    }
}
