//! MSE calibration: the range whose fake quantization has the smallest expected squared error
//! ([`mse_objective`]).
//!
//! **Search.** Symmetric targets: a 1-D search over `T` in `(0, max|x|]` for `(-T, T)`.
//! Asymmetric targets: `lo` in `[min(min, 0), 0]` and `hi` in `[0, max(max, 0)]` (1-D when the
//! data has one sign), first on a 24 × 24 grid, then by coordinate descent. Every 1-D search
//! evaluates a coarse set (64 evenly spaced and 48 geometrically spaced candidates, so long
//! tails are searched finely near zero), then zooms in three times with 32 evenly spaced points
//! between the best candidate's neighbours.

use super::{round_half_even, scale_zero_point, QuantTarget};
use crate::calibrate::observer::{pow2, Histogram};

/// Histogram bins as weighted points.
struct Points {
    values: Vec<f64>,
    weights: Vec<f64>,
    total: f64,
}

/// At most this many points: larger grids (`bins` above the default) are coarsened by exact
/// pair merges first, so that the search stays fast.
const MAX_POINTS: usize = 8192;

fn points(h: &Histogram) -> Option<Points> {
    let stats = h.stats();
    if stats.count == 0 {
        return None;
    }
    let (exponent, offset) = h.grid();
    let counts = h.counts();
    let mut shift = 0;
    while counts.len() >> shift > MAX_POINTS {
        shift += 1;
    }
    let width = pow2(exponent + shift);
    let (min, max) = (f64::from(stats.min), f64::from(stats.max));
    let mut p = Points {
        values: Vec::new(),
        weights: Vec::new(),
        total: stats.count as f64,
    };
    if h.zeros() > 0 {
        p.values.push(0.0);
        p.weights.push(h.zeros() as f64);
    }
    // Coarse bin `k` gathers slots whose grid index `i` has `i >> shift == k`.
    let mut bin = None;
    let mut count = 0u64;
    let flush = |bin: Option<i64>, count: u64, p: &mut Points| {
        if let (Some(k), true) = (bin, count > 0) {
            p.values.push(((k as f64 + 0.5) * width).clamp(min, max));
            p.weights.push(count as f64);
        }
    };
    for (j, &c) in counts.iter().enumerate() {
        let index = offset + j as i64;
        let c = if index == 0 {
            c.saturating_sub(h.zeros())
        } else {
            c
        };
        let k = index >> shift;
        if bin != Some(k) {
            flush(bin, count, &mut p);
            (bin, count) = (Some(k), 0);
        }
        count += c;
    }
    flush(bin, count, &mut p);
    Some(p)
}

impl Points {
    /// The objective for the range `(lo, hi)`, as the quantizer will see it (in f32).
    fn error(&self, lo: f64, hi: f64, target: &QuantTarget) -> f64 {
        let (scale, zero_point) = scale_zero_point(lo as f32, hi as f32, target);
        let scale = f64::from(scale);
        let inv = 1.0 / scale;
        let q_lo = f64::from(target.qmin() - zero_point);
        let q_hi = f64::from(target.qmax() - zero_point);
        // Four accumulators so the additions do not wait on each other.
        let mut acc = [0.0f64; 4];
        let chunks = self
            .values
            .chunks_exact(4)
            .zip(self.weights.chunks_exact(4));
        let tail = self.values.len() - self.values.len() % 4;
        let err = |x: f64| {
            let q = round_half_even((x * inv).clamp(q_lo - 1.0, q_hi + 1.0)).clamp(q_lo, q_hi);
            let d = x - q * scale;
            d * d
        };
        for (xs, ws) in chunks {
            for l in 0..4 {
                acc[l] += ws[l] * err(xs[l]);
            }
        }
        for (x, w) in self.values[tail..].iter().zip(&self.weights[tail..]) {
            acc[0] += w * err(*x);
        }
        (acc[0] + acc[1] + acc[2] + acc[3]) / self.total
    }
}

/// The histogram's estimate of the mean squared fake-quantization error over the range
/// `(lo, hi)`; `None` when the histogram is empty.
///
/// Each non-empty histogram bin stands for its values at the bin centre (clamped to the data's
/// exact min and max); exact zeros are kept apart at 0. (Grids of more than 8192 slots, from a
/// `bins` above the default, are first coarsened by exact pair merges.) The range gives
/// `(scale, zp)` by [`scale_zero_point`]; a value `x` becomes
/// `(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale` (round half to even, like
/// `QuantizeLinear`), and the objective is the count-weighted mean of `(x - that)^2`.
pub fn mse_objective(histogram: &Histogram, lo: f32, hi: f32, target: &QuantTarget) -> Option<f64> {
    Some(points(histogram)?.error(f64::from(lo), f64::from(hi), target))
}

/// Candidates in `(0, max]`: evenly and geometrically spaced, sorted, without duplicates.
fn coarse_candidates(max: f64, even: usize, geometric: usize) -> Vec<f64> {
    let mut c: Vec<f64> = (1..=even).map(|k| max * k as f64 / even as f64).collect();
    c.extend((1..=geometric).map(|k| max * (-(k as f64) / 4.0).exp2()));
    c.retain(|&x| x > 0.0);
    c.sort_by(f64::total_cmp);
    c.dedup();
    c
}

/// Minimises `f` over `(0, max]`: evaluates `max` and `candidates` (sorted, in `(0, max]`),
/// then zooms in three times between the best point's neighbours. Returns `(argmin, min)`.
fn minimize_1d(f: impl Fn(f64) -> f64, max: f64, candidates: &[f64]) -> (f64, f64) {
    let mut points: Vec<f64> = candidates
        .iter()
        .copied()
        .filter(|&c| c > 0.0 && c < max)
        .collect();
    points.push(max);
    let values: Vec<f64> = points.iter().map(|&x| f(x)).collect();
    let mut at = 0;
    for (k, &v) in values.iter().enumerate() {
        if v < values[at] {
            at = k;
        }
    }
    let mut best = (points[at], values[at]);
    let mut lo = if at == 0 { 0.0 } else { points[at - 1] };
    let mut hi = points.get(at + 1).copied().unwrap_or(max);
    const STEPS: usize = 32;
    for _ in 0..3 {
        let step = (hi - lo) / STEPS as f64;
        if step <= 0.0 {
            break;
        }
        for k in 1..STEPS {
            let x = lo + step * k as f64;
            let v = f(x);
            if v < best.1 {
                best = (x, v);
            }
        }
        lo = (best.0 - step).max(0.0);
        hi = (best.0 + step).min(max);
    }
    best
}

/// The MSE-optimal `(lo, hi)`, or `None` for an empty histogram.
pub(super) fn range(h: &Histogram, target: &QuantTarget) -> Option<(f64, f64)> {
    let p = points(h)?;
    let stats = h.stats();
    let (min, max) = (f64::from(stats.min), f64::from(stats.max));
    let coarse = |m: f64| coarse_candidates(m, 64, 48);
    if target.symmetric {
        let m = (-min).max(max);
        let (t, _) = minimize_1d(|t| p.error(-t, t, target), m, &coarse(m));
        return Some((-t, t));
    }
    let (down, up) = ((-min).max(0.0), max.max(0.0));
    if down == 0.0 {
        let (hi, _) = minimize_1d(|hi| p.error(0.0, hi, target), up, &coarse(up));
        return Some((0.0, hi));
    }
    if up == 0.0 {
        let (d, _) = minimize_1d(|d| p.error(-d, 0.0, target), down, &coarse(down));
        return Some((-d, 0.0));
    }
    let (downs, ups) = (
        coarse_candidates(down, 12, 12),
        coarse_candidates(up, 12, 12),
    );
    let mut best = (down, up, p.error(-down, up, target));
    for &d in &downs {
        for &u in &ups {
            let v = p.error(-d, u, target);
            if v < best.2 {
                best = (d, u, v);
            }
        }
    }
    // Coordinate descent, each step searching around the current point.
    let around = |x: f64, m: f64| {
        coarse_candidates(m, 64, 48)
            .into_iter()
            .filter(move |&c| c >= x / 2.0 && c <= x * 2.0)
    };
    for _ in 0..4 {
        let before = best.2;
        let near: Vec<f64> = around(best.1, up).collect();
        let (u, v) = minimize_1d(|u| p.error(-best.0, u, target), up, &near);
        if v < best.2 {
            best = (best.0, u, v);
        }
        let near: Vec<f64> = around(best.0, down).collect();
        let (d, v) = minimize_1d(|d| p.error(-d, best.1, target), down, &near);
        if v < best.2 {
            best = (d, best.1, v);
        }
        if best.2 >= before {
            break;
        }
    }
    Some((-best.0, best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[f32]) -> Histogram {
        let mut h = Histogram::new(2048);
        h.observe(values);
        h
    }

    fn spread(n: usize) -> Vec<f32> {
        // A deterministic bell shape: sums of three golden-ratio sequences.
        (0..n)
            .map(|i| {
                let f = |k: f32| ((i as f32) * k).fract() - 0.5;
                f(0.618_034) + f(0.414_213_6) + f(0.732_050_8)
            })
            .collect()
    }

    #[test]
    fn objective_matches_direct_fake_quantization() {
        let values = spread(5000);
        let h = histogram(&values);
        for target in [QuantTarget::U8, QuantTarget::S8_SYMMETRIC] {
            for (lo, hi) in [(-1.0f32, 1.0f32), (-0.3, 0.9), (-1.5, 1.5)] {
                let (scale, zp) = scale_zero_point(lo, hi, &target);
                let direct: f64 = values
                    .iter()
                    .map(|&x| {
                        let q = ((x / scale).round_ties_even() as i32 + zp)
                            .clamp(target.qmin(), target.qmax());
                        let d = f64::from(x) - f64::from((q - zp) as f32 * scale);
                        d * d
                    })
                    .sum::<f64>()
                    / values.len() as f64;
                let ours = mse_objective(&h, lo, hi, &target).unwrap();
                assert!(
                    (ours - direct).abs() <= 0.02 * direct,
                    "{target:?} ({lo}, {hi}): {ours} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn search_beats_a_dense_grid() {
        let mut values = spread(20_000);
        values.extend([30.0, -25.0, 28.0]);
        let h = histogram(&values);
        for target in [QuantTarget::U8, QuantTarget::S8_SYMMETRIC] {
            let (lo, hi) = range(&h, &target).unwrap();
            let ours = mse_objective(&h, lo as f32, hi as f32, &target).unwrap();
            let mut grid_best = f64::INFINITY;
            for a in 1..=120 {
                for b in 1..=120 {
                    let (l, u) = (
                        -25.0 * (a as f32 / 120.0).powi(2),
                        30.0 * (b as f32 / 120.0).powi(2),
                    );
                    let (l, u) = if target.symmetric { (-u, u) } else { (l, u) };
                    grid_best = grid_best.min(mse_objective(&h, l, u, &target).unwrap());
                }
            }
            assert!(
                ours <= grid_best * 1.001,
                "{target:?}: {ours} vs grid {grid_best}"
            );
            // Three outliers in 20 000 cost more clipped than kept, but not entirely.
            assert!(
                hi < 30.0 && (target.symmetric || lo > -25.0),
                "({lo}, {hi})"
            );
        }
    }

    #[test]
    fn one_signed_data_searches_one_side() {
        let values: Vec<f32> = spread(3000).iter().map(|x| x.abs() + 1.0).collect();
        let (lo, hi) = range(&histogram(&values), &QuantTarget::U8).unwrap();
        assert_eq!(lo, 0.0);
        assert!(hi > 1.0 && hi <= 2.5, "{hi}");
        let negative: Vec<f32> = values.iter().map(|x| -x).collect();
        let (lo, hi) = range(&histogram(&negative), &QuantTarget::U8).unwrap();
        assert_eq!(hi, 0.0);
        assert!((-2.5..-1.0).contains(&lo), "{lo}");
    }
}
