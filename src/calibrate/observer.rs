//! Streaming observers of float tensors. Memory depends on the number of tensors and bins, never
//! on the number of calibration samples.
//!
//! [`MinMax`] keeps the exact extremes; [`MovingAverageMinMax`] smooths them across samples;
//! [`Histogram`] counts values on a grid anchored at zero whose bin width is a power of two.
//! Because every grid nests in every coarser one, growing a histogram and merging two of them are
//! exact: a histogram is a function of the multiset of values it saw, whatever the order and
//! however they were split into samples.

use serde::{Deserialize, Serialize};

/// Default histogram resolution (the `bins` of [`Histogram::new`]).
pub const DEFAULT_BINS: usize = 2048;

/// Default momentum of [`MovingAverageMinMax`] (onnxruntime's `averaging_constant`).
pub const DEFAULT_MOMENTUM: f32 = 0.01;

/// Storage slots per requested bin. The grid's bin width is the smallest power of two for which
/// the data fits in the slots, so the data's span covers at least `2 * bins` bins and
/// `[0, max|x|]` at least `bins` bins (what the entropy search needs).
pub(crate) const SLOTS_PER_BIN: usize = 4;

/// Upper limit of the requested resolution (32 MiB of counts per histogram).
pub const MAX_BINS: usize = 1 << 20;

/// The finest bin width is 2^-149, the spacing of f32 subnormals: every f32 is a whole multiple
/// of it, so nothing is lost by never going finer.
const MIN_EXPONENT: i32 = -149;

/// Bin indices stay below 2^40 in magnitude, so they are exact in f64 and never overflow i64.
const MAX_INDEX_BITS: i32 = 40;

/// Finite extremes, finite count and non-finite count of one slice.
struct Scan {
    min: f32,
    max: f32,
    finite: u64,
    non_finite: u64,
}

/// One pass over `values`, written so that the compiler vectorises it: 16 independent lanes
/// of min/max (enough of them to hide the latency of each lane's chain) and of non-finite
/// counts. NaN never wins a comparison; an infinity can, so when there are non-finite values a
/// second, exact pass over the finite ones follows.
fn scan(values: &[f32]) -> Scan {
    const LANES: usize = 16;
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut non_finite = 0u64;
    // u32 lane counters cannot overflow within a block of 2^26 chunks.
    for block in values.chunks(LANES << 26) {
        let mut bad = [0u32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for l in 0..LANES {
                let x = chunk[l];
                bad[l] += u32::from((x.to_bits() & 0x7fff_ffff) >= 0x7f80_0000);
                lo[l] = if x < lo[l] { x } else { lo[l] };
                hi[l] = if x > hi[l] { x } else { hi[l] };
            }
        }
        for &x in rest {
            bad[0] += u32::from(!x.is_finite());
            lo[0] = if x < lo[0] { x } else { lo[0] };
            hi[0] = if x > hi[0] { x } else { hi[0] };
        }
        non_finite += bad.iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    let (mut min, mut max) = (
        lo.iter().copied().fold(f32::INFINITY, f32::min),
        hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    );
    if non_finite > 0 {
        (min, max) = finite_extremes(values);
    }
    Scan {
        min,
        max,
        finite: values.len() as u64 - non_finite,
        non_finite,
    }
}

/// Min and max of the finite values (the slower pass, for slices with NaN or ±Inf).
fn finite_extremes(values: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            let x = chunk[l];
            let finite = (x.to_bits() & 0x7fff_ffff) < 0x7f80_0000;
            lo[l] = if finite && x < lo[l] { x } else { lo[l] };
            hi[l] = if finite && x > hi[l] { x } else { hi[l] };
        }
    }
    for &x in rest.iter().filter(|x| x.is_finite()) {
        lo[0] = lo[0].min(x);
        hi[0] = hi[0].max(x);
    }
    (
        lo.iter().copied().fold(f32::INFINITY, f32::min),
        hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    )
}

/// Running minimum and maximum of the finite values seen.
///
/// While empty (`count == 0`) `min` and `max` are 0, so the value always serializes to JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinMax {
    /// Smallest finite value seen.
    pub min: f32,
    /// Largest finite value seen.
    pub max: f32,
    /// Number of finite values seen.
    pub count: u64,
    /// Number of NaN and ±Inf values seen (otherwise ignored).
    pub non_finite: u64,
}

impl Default for MinMax {
    fn default() -> Self {
        Self::new()
    }
}

impl MinMax {
    /// An observer that has seen nothing.
    pub fn new() -> Self {
        MinMax {
            min: 0.0,
            max: 0.0,
            count: 0,
            non_finite: 0,
        }
    }

    /// Adds every value of `values`.
    pub fn observe(&mut self, values: &[f32]) {
        self.absorb(&scan(values));
    }

    fn absorb(&mut self, s: &Scan) {
        self.merge(&MinMax {
            min: s.min,
            max: s.max,
            count: s.finite,
            non_finite: s.non_finite,
        });
    }

    /// Adds what `other` saw: the result is exactly that of observing both inputs.
    pub fn merge(&mut self, other: &MinMax) {
        self.non_finite = self.non_finite.saturating_add(other.non_finite);
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            // Written so that a NaN in a hand-built `other` is ignored rather than spread.
            if other.min < self.min {
                self.min = other.min;
            }
            if other.max > self.max {
                self.max = other.max;
            }
        }
        self.count = self.count.saturating_add(other.count);
    }

    /// True when no finite value was seen.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Minimum and maximum averaged over samples: each [`observe`](Self::observe) call is one
/// sample, and `min_avg += momentum * (sample_min - min_avg)` (the first sample sets it).
/// Samples without a finite value are skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MovingAverageMinMax {
    momentum: f32,
    min: f32,
    max: f32,
    samples: u64,
    count: u64,
    non_finite: u64,
}

impl MovingAverageMinMax {
    /// An empty observer. `momentum` is clamped to `[0, 1]`; NaN means [`DEFAULT_MOMENTUM`].
    pub fn new(momentum: f32) -> Self {
        let momentum = if momentum.is_nan() {
            DEFAULT_MOMENTUM
        } else {
            momentum.clamp(0.0, 1.0)
        };
        MovingAverageMinMax {
            momentum,
            min: 0.0,
            max: 0.0,
            samples: 0,
            count: 0,
            non_finite: 0,
        }
    }

    /// Adds one sample.
    pub fn observe(&mut self, values: &[f32]) {
        let s = scan(values);
        self.non_finite = self.non_finite.saturating_add(s.non_finite);
        if s.finite == 0 {
            return;
        }
        if self.samples == 0 {
            self.min = s.min;
            self.max = s.max;
        } else {
            // In f64 the difference cannot overflow, and the result stays between the old
            // average and the new extreme.
            let m = f64::from(self.momentum);
            let step =
                |avg: f32, x: f32| (f64::from(avg) + m * (f64::from(x) - f64::from(avg))) as f32;
            self.min = step(self.min, s.min);
            self.max = step(self.max, s.max);
        }
        self.samples += 1;
        self.count = self.count.saturating_add(s.finite);
    }

    /// The averaged minimum (0 while empty).
    pub fn min(&self) -> f32 {
        self.min
    }

    /// The averaged maximum (0 while empty).
    pub fn max(&self) -> f32 {
        self.max
    }

    /// The momentum in use.
    pub fn momentum(&self) -> f32 {
        self.momentum
    }

    /// Number of samples that had a finite value.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// True when no finite value was seen.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The averages as a [`MinMax`], ready for [`compute_range`](super::range::compute_range).
    pub fn to_minmax(&self) -> MinMax {
        MinMax {
            min: self.min,
            max: self.max,
            count: self.count,
            non_finite: self.non_finite,
        }
    }
}

/// 2^e, exactly, for e in the f64 normal range.
pub(crate) fn pow2(e: i32) -> f64 {
    f64::from_bits(((e.clamp(-1022, 1023) + 1023) as u64) << 52)
}

/// Saturating conversion to a finite f32.
pub(crate) fn to_f32(x: f64) -> f32 {
    x.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

/// ⌊x / 2^e⌋ for a finite f32 `x`: exact, since the division by a power of two is.
fn grid_index(x: f32, e: i32) -> i64 {
    (f64::from(x) * pow2(-e)).floor() as i64
}

/// The smallest exponent `e >= at_least` such that `[lo, hi]` fits in `slots` bins of width 2^e
/// and its indices stay below 2^MAX_INDEX_BITS. Both conditions are monotone in `e` and in the
/// interval, so growing a histogram one sample at a time ends on the same exponent as building it
/// from all values at once.
fn grid_exponent(lo: f32, hi: f32, slots: usize, at_least: i32) -> i32 {
    let magnitude = f64::from(lo.abs().max(hi.abs()));
    let magnitude_exponent = if magnitude > 0.0 {
        let floor_log2 = ((magnitude.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        floor_log2 + 1 - MAX_INDEX_BITS
    } else {
        MIN_EXPONENT
    };
    let span = f64::from(hi) - f64::from(lo);
    // A lower bound on the answer (the loop finds the exact one): w > span / slots.
    let span_exponent = if span > 0.0 {
        (span / slots as f64).log2().floor() as i32 - 1
    } else {
        MIN_EXPONENT
    };
    let mut e = at_least
        .max(MIN_EXPONENT)
        .max(magnitude_exponent)
        .max(span_exponent);
    // Finite inputs fit after a few steps; the bound only guards against corrupt states.
    while e < 1000 && grid_index(hi, e) - grid_index(lo, e) > slots as i64 - 1 {
        e += 1;
    }
    e
}

/// Binned counts of some values, for quantiles.
struct BinnedValues<'a> {
    counts: &'a [u64],
    /// Lower edge of `counts[0]`.
    lower: f64,
    width: f64,
    /// `(bin, n)`: the bin starting at 0 holds `n` exact zeros, its smallest values.
    zeros: Option<(usize, u64)>,
    /// Exact smallest value, when known.
    min: Option<f64>,
    /// Exact largest value.
    max: f64,
}

impl BinnedValues<'_> {
    /// A quantile within one bin width of numpy's `np.percentile(values, 100 q)` (linear
    /// interpolation between order statistics).
    ///
    /// Order statistic `j` is placed inside its bin at `(j - before + 0.5) / count` of the bin
    /// (so it lies in the bin, as the true value does; exact zeros and the exact extremes are
    /// placed exactly), and the two order statistics around `q (n - 1)` are interpolated like
    /// numpy does.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = q * (total - 1) as f64;
        let below = (rank.floor() as u64).min(total - 1);
        let above = (below + 1).min(total - 1);
        let frac = rank - below as f64;
        let (v_below, v_above) = (
            self.order_statistic(below, total),
            self.order_statistic(above, total),
        );
        let value = v_below + frac * (v_above - v_below);
        let floor = self.min.unwrap_or(self.lower);
        Some(value.clamp(floor.min(self.max), self.max))
    }

    fn order_statistic(&self, j: u64, total: u64) -> f64 {
        if j + 1 == total {
            return self.max;
        }
        if let (0, Some(min)) = (j, self.min) {
            return min;
        }
        let mut before = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            if j < before + c {
                let (mut inside, mut count) = (j - before, c);
                if let Some((zero_bin, zeros)) = self.zeros {
                    if b == zero_bin {
                        if inside < zeros {
                            return 0.0;
                        }
                        inside -= zeros;
                        count -= zeros;
                    }
                }
                return self.lower + (b as f64 + (inside as f64 + 0.5) / count as f64) * self.width;
            }
            before += c;
        }
        self.max
    }
}

/// 1.5 * 2^52: adding it rounds any |y| < 2^51 to an integer, which its low bits then hold.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// ⌊x · inv_width⌋ for a finite `x` whose result is below 2^51 in magnitude, exactly and
/// without a float-to-int conversion: the product is exact (a power of two), adding
/// `ROUND_MAGIC` rounds it, and the result is corrected down when it rounded up.
#[inline(always)]
fn slot_of(x: f32, inv_width: f64) -> i64 {
    let y = f64::from(x) * inv_width;
    let shifted = y + ROUND_MAGIC;
    let rounded = shifted - ROUND_MAGIC;
    (shifted.to_bits() as i64 - ROUND_MAGIC.to_bits() as i64) - i64::from(rounded > y)
}

/// Inputs at least this long (and at least 4 values per slot) are counted into four
/// interleaved u32 sub-histograms: consecutive values that fall in the same bin (the zeros of a
/// ReLU output) then do not wait on each other.
const INTERLEAVE_MIN_LEN: usize = 1 << 15;

/// Adds 1 to `counts[slot(x)]` for every `x` (a slot `>= counts.len()` is skipped) and returns
/// the number of exact zeros. Slots are computed a block at a time, then counted.
fn count_slots(values: &[f32], counts: &mut [u64], slot: impl Fn(f32) -> u32) -> u64 {
    const BLOCK: usize = 256;
    let mut index = [0u32; BLOCK];
    let mut zeros = 0u64;
    // Fills `index` with the block's slots; returns its number of zeros.
    let slots_of = |block: &[f32], index: &mut [u32]| {
        let mut block_zeros = 0u32;
        for (i, &x) in index.iter_mut().zip(block) {
            block_zeros += u32::from(x == 0.0);
            *i = slot(x);
        }
        u64::from(block_zeros)
    };
    if values.len() < INTERLEAVE_MIN_LEN.max(4 * counts.len()) {
        for block in values.chunks(BLOCK) {
            let index = &mut index[..block.len()];
            zeros += slots_of(block, index);
            for &i in index.iter() {
                if let Some(c) = counts.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        return zeros;
    }
    let slots = counts.len();
    let stride = slots + 1; // each sub-histogram has a last slot for skipped values
    let at = |i: u32| (i as usize).min(slots);
    let mut sub = vec![0u32; 4 * stride];
    // A sub-histogram sees at most one part: no u32 overflow.
    for part in values.chunks(u32::MAX as usize) {
        for block in part.chunks(BLOCK) {
            let index = &mut index[..block.len()];
            zeros += slots_of(block, index);
            let mut quads = index.chunks_exact(4);
            for q in &mut quads {
                sub[at(q[0])] += 1;
                sub[stride + at(q[1])] += 1;
                sub[2 * stride + at(q[2])] += 1;
                sub[3 * stride + at(q[3])] += 1;
            }
            for &i in quads.remainder() {
                sub[at(i)] += 1;
            }
        }
        for (j, c) in counts.iter_mut().enumerate() {
            let n = [0, 1, 2, 3].map(|k| u64::from(sub[k * stride + j]));
            *c += n.iter().sum::<u64>();
        }
        sub.fill(0);
    }
    zeros
}

/// Counts of |x| on the histogram's grid folded at zero, as a dense run of bins.
pub(crate) struct FoldedCounts {
    /// Index of the first bin: it covers `[first * width, (first + 1) * width]`.
    pub first: i64,
    /// log2 of the bin width.
    pub exponent: i32,
    /// Counts of consecutive bins from `first`.
    pub counts: Vec<u64>,
}

/// A histogram of fixed bin count on a power-of-two grid anchored at 0, growing as needed.
///
/// The grid has `4 * bins` slots of width `w = 2^e` covering `[a w, (a + 4 bins) w)`, with `e` the
/// smallest exponent for which all finite values seen fit (so the data's span covers at least
/// `2 * bins` bins) and `a = ⌊min / w⌋`. A value `x` is counted in slot `⌊x / w⌋ - a`, computed
/// exactly. When a sample exceeds the grid, pairs of bins are merged (doubling `w`) and the
/// window slides: exact, because grids nest. Merging two histograms is exact for the same reason.
/// Exact zeros, exact extremes and non-finite values are counted beside the bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HistogramRepr")]
pub struct Histogram {
    bins: usize,
    exponent: i32,
    offset: i64,
    counts: Vec<u64>,
    zeros: u64,
    stats: MinMax,
}

/// The serialized form, validated before it becomes a [`Histogram`].
#[derive(Deserialize)]
struct HistogramRepr {
    bins: usize,
    exponent: i32,
    offset: i64,
    counts: Vec<u64>,
    zeros: u64,
    stats: MinMax,
}

impl TryFrom<HistogramRepr> for Histogram {
    type Error = String;

    fn try_from(r: HistogramRepr) -> Result<Self, String> {
        if !(2..=MAX_BINS).contains(&r.bins) || r.counts.len() != r.bins * SLOTS_PER_BIN {
            return Err(format!(
                "histogram: {} counts for {} bins",
                r.counts.len(),
                r.bins
            ));
        }
        if !(MIN_EXPONENT..=1000).contains(&r.exponent)
            || r.offset.unsigned_abs() > 1 << (MAX_INDEX_BITS + 1)
        {
            return Err("histogram: grid out of range".into());
        }
        let sum = r.counts.iter().try_fold(0u64, |s, &c| s.checked_add(c));
        if sum != Some(r.stats.count) {
            return Err("histogram: counts do not add up to the total".into());
        }
        let zero_slot = usize::try_from(-r.offset).ok();
        if r.zeros
            > zero_slot
                .and_then(|j| r.counts.get(j))
                .copied()
                .unwrap_or(0)
        {
            return Err("histogram: more zeros than values in the zero bin".into());
        }
        if r.stats.count > 0 {
            let (min, max) = (r.stats.min, r.stats.max);
            let slots = r.counts.len() as i64;
            if !(min.is_finite() && max.is_finite() && min <= max)
                || grid_index(min, r.exponent) < r.offset
                || grid_index(max, r.exponent) >= r.offset + slots
            {
                return Err("histogram: min/max outside the grid".into());
            }
        }
        Ok(Histogram {
            bins: r.bins,
            exponent: r.exponent,
            offset: r.offset,
            counts: r.counts,
            zeros: r.zeros,
            stats: r.stats,
        })
    }
}

/// A quantile of a histogram, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantileValue {
    /// The quantile, in `[0, 1]`.
    pub quantile: f64,
    /// Its estimated value (within one bin width).
    pub value: f32,
}

/// What the ranges JSON reports about a histogram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// Requested resolution (the grid has 4× as many slots).
    pub bins: usize,
    /// Lower edge of the first non-empty bin (0 when empty).
    pub lower: f32,
    /// Upper edge of the last non-empty bin (0 when empty).
    pub upper: f32,
    /// Bin width.
    pub bin_width: f32,
    /// Number of finite values counted.
    pub total: u64,
    /// How many of them were exactly zero.
    pub zeros: u64,
    /// Number of NaN and ±Inf values seen (not counted in bins).
    pub non_finite: u64,
    /// Exact smallest finite value (0 when empty).
    pub min: f32,
    /// Exact largest finite value (0 when empty).
    pub max: f32,
    /// Quantiles 0.01, 0.5, 0.99 and 0.9999 (empty when the histogram is).
    pub quantiles: Vec<QuantileValue>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(DEFAULT_BINS)
    }
}

impl Histogram {
    /// An empty histogram of resolution `bins`, clamped to `[2, 2^20]`; see [`DEFAULT_BINS`].
    pub fn new(bins: usize) -> Self {
        let bins = bins.clamp(2, MAX_BINS);
        Histogram {
            bins,
            exponent: MIN_EXPONENT,
            offset: 0,
            counts: vec![0; bins * SLOTS_PER_BIN],
            zeros: 0,
            stats: MinMax::new(),
        }
    }

    /// Counts every finite value of `values`, first growing the grid if they exceed it.
    pub fn observe(&mut self, values: &[f32]) {
        let s = scan(values);
        if s.finite > 0 {
            let (lo, hi) = if self.stats.count == 0 {
                (s.min, s.max)
            } else {
                (s.min.min(self.stats.min), s.max.max(self.stats.max))
            };
            self.fit(lo, hi, self.exponent);
            self.count_values(values, s.non_finite > 0);
        }
        self.stats.absorb(&s);
    }

    /// Counts `values`, which `fit` made sure lie on the grid.
    fn count_values(&mut self, values: &[f32], has_non_finite: bool) {
        let (inv_width, offset) = (pow2(-self.exponent), self.offset);
        debug_assert!(self.counts.len() < u32::MAX as usize);
        // Slots are u32 (the grid has at most 2^22 of them); `u32::MAX` means "not counted".
        let zeros = if has_non_finite {
            count_slots(values, &mut self.counts, |x| {
                if x.is_finite() {
                    (slot_of(x, inv_width) - offset) as u32
                } else {
                    u32::MAX
                }
            })
        } else {
            count_slots(values, &mut self.counts, |x| {
                (slot_of(x, inv_width) - offset) as u32
            })
        };
        self.zeros += zeros;
    }

    /// Moves to the canonical grid for data spanning `[lo, hi]` (exponent at least `at_least`).
    fn fit(&mut self, lo: f32, hi: f32, at_least: i32) {
        let exponent = grid_exponent(lo, hi, self.counts.len(), at_least);
        let offset = grid_index(lo, exponent);
        if exponent == self.exponent && offset == self.offset {
            return;
        }
        if self.stats.count > 0 {
            let mut counts = vec![0; self.counts.len()];
            add_rebinned(
                &mut counts,
                exponent,
                offset,
                &self.counts,
                self.exponent,
                self.offset,
            );
            self.counts = counts;
        }
        self.exponent = exponent;
        self.offset = offset;
    }

    /// Adds what `other` saw. The counts equal those of one histogram that observed both inputs
    /// whenever both have the same resolution; otherwise the result is exact but may sit on a
    /// coarser grid than needed (never finer than either input's).
    pub fn merge(&mut self, other: &Histogram) {
        if other.stats.count == 0 {
            self.stats.non_finite = self.stats.non_finite.saturating_add(other.stats.non_finite);
            return;
        }
        let (lo, hi) = if self.stats.count == 0 {
            (other.stats.min, other.stats.max)
        } else {
            (
                self.stats.min.min(other.stats.min),
                self.stats.max.max(other.stats.max),
            )
        };
        self.fit(lo, hi, self.exponent.max(other.exponent));
        add_rebinned(
            &mut self.counts,
            self.exponent,
            self.offset,
            &other.counts,
            other.exponent,
            other.offset,
        );
        self.zeros += other.zeros;
        self.stats.merge(&other.stats);
    }

    /// The counts of the grid's `4 * bins` slots, from [`lower`](Self::lower) up.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Lower edge of the first slot (a multiple of the bin width).
    pub fn lower(&self) -> f32 {
        to_f32(self.offset as f64 * pow2(self.exponent))
    }

    /// Upper edge of the last slot.
    pub fn upper(&self) -> f32 {
        to_f32((self.offset + self.counts.len() as i64) as f64 * pow2(self.exponent))
    }

    /// Bin width: a power of two, at least 2^-149.
    pub fn bin_width(&self) -> f32 {
        to_f32(pow2(self.exponent))
    }

    /// Number of finite values counted.
    pub fn total(&self) -> u64 {
        self.stats.count
    }

    /// The requested resolution.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// How many of the values were exactly zero (±0).
    pub fn zeros(&self) -> u64 {
        self.zeros
    }

    /// Exact min, max and counts of what was observed.
    pub fn stats(&self) -> &MinMax {
        &self.stats
    }

    /// The `q`-quantile (`q` in `[0, 1]`) of the values, within one bin width of numpy's
    /// `np.percentile(values, 100 q)`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f32> {
        let zero_slot = usize::try_from(-self.offset)
            .ok()
            .filter(|&j| j < self.counts.len());
        BinnedValues {
            counts: &self.counts,
            lower: self.offset as f64 * pow2(self.exponent),
            width: pow2(self.exponent),
            zeros: zero_slot.map(|j| (j, self.zeros)),
            min: Some(f64::from(self.stats.min)),
            max: f64::from(self.stats.max),
        }
        .quantile(q)
        .map(to_f32)
    }

    /// The `q`-quantile of |x|, within one bin width of `np.percentile(np.abs(values), 100 q)`;
    /// `None` when empty.
    pub fn abs_quantile(&self, q: f64) -> Option<f32> {
        let folded = self.folded(false)?;
        let width = pow2(folded.exponent);
        BinnedValues {
            counts: &folded.counts,
            lower: folded.first as f64 * width,
            width,
            zeros: (folded.first == 0).then_some((0, self.zeros)),
            min: None,
            max: f64::from(self.stats.min.abs().max(self.stats.max.abs())),
        }
        .quantile(q)
        .map(to_f32)
    }

    /// The counts of |x| on the same grid: slot `k >= 0` (values in `[k w, (k+1) w)`) stays `k`,
    /// slot `k < 0` (values in `[k w, (k+1) w)`, so |x| in `((-k-1) w, -k w]`) becomes `-k - 1`.
    /// `None` when no value (or, with `exclude_zeros`, no non-zero value) was seen.
    pub(crate) fn folded(&self, exclude_zeros: bool) -> Option<FoldedCounts> {
        let fold = |k: i64| if k >= 0 { k } else { -k - 1 };
        let slot_count = |j: usize| {
            let zeros = if exclude_zeros && self.offset + j as i64 == 0 {
                self.zeros
            } else {
                0
            };
            self.counts[j].saturating_sub(zeros)
        };
        let occupied = (0..self.counts.len()).filter(|&j| slot_count(j) > 0);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for j in occupied {
            let f = fold(self.offset + j as i64);
            first = first.min(f);
            last = last.max(f);
        }
        if first > last {
            return None;
        }
        let mut counts = vec![0u64; (last - first + 1) as usize];
        for j in 0..self.counts.len() {
            let c = slot_count(j);
            if c > 0 {
                counts[(fold(self.offset + j as i64) - first) as usize] += c;
            }
        }
        Some(FoldedCounts {
            first,
            exponent: self.exponent,
            counts,
        })
    }

    /// Grid parameters: log2 of the bin width, and the first slot's index on the grid.
    pub(crate) fn grid(&self) -> (i32, i64) {
        (self.exponent, self.offset)
    }

    /// A compact description for the ranges JSON.
    pub fn summary(&self) -> HistogramSummary {
        let width = pow2(self.exponent);
        let occupied = self
            .counts
            .iter()
            .position(|&c| c > 0)
            .zip(self.counts.iter().rposition(|&c| c > 0));
        let (lower, upper) = occupied.map_or((0.0, 0.0), |(a, b)| {
            (
                to_f32((self.offset + a as i64) as f64 * width),
                to_f32((self.offset + b as i64 + 1) as f64 * width),
            )
        });
        let quantiles = [0.01, 0.5, 0.99, 0.9999]
            .iter()
            .filter_map(|&q| {
                self.quantile(q)
                    .map(|value| QuantileValue { quantile: q, value })
            })
            .collect();
        HistogramSummary {
            bins: self.bins,
            lower,
            upper,
            bin_width: self.bin_width(),
            total: self.stats.count,
            zeros: self.zeros,
            non_finite: self.stats.non_finite,
            min: self.stats.min,
            max: self.stats.max,
            quantiles,
        }
    }
}

/// Adds `src` (grid 2^`src_exponent`, first slot `src_offset`) into `dst` (a grid at least as
/// coarse). Exact: slot `k` of the finer grid lies in slot `k >> d` of the coarser one.
fn add_rebinned(
    dst: &mut [u64],
    dst_exponent: i32,
    dst_offset: i64,
    src: &[u64],
    src_exponent: i32,
    src_offset: i64,
) {
    let shift = (dst_exponent - src_exponent).clamp(0, 63) as u32;
    let last = dst.len() - 1;
    for (j, &c) in src.iter().enumerate() {
        if c > 0 {
            let k = ((src_offset + j as i64) >> shift) - dst_offset;
            debug_assert!(
                (0..=last as i64).contains(&k),
                "rebinned slot {k} outside the grid"
            );
            dst[(k.max(0) as usize).min(last)] += c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values with both signs, zeros and a few repeats.
    fn sample(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 17 == 0 {
                    0.0
                } else {
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.3) * scale
                }
            })
            .collect()
    }

    #[test]
    fn minmax_merge_equals_all_at_once() {
        let values = sample(10_001, 1, 7.0);
        let mut all = MinMax::new();
        all.observe(&values);
        for split in [1, 7, 100, 5000, 10_000] {
            let (a, b) = values.split_at(split);
            let (mut left, mut right) = (MinMax::new(), MinMax::new());
            left.observe(a);
            right.observe(b);
            left.merge(&right);
            assert_eq!(left, all, "split at {split}");
        }
        let expected_min = values.iter().copied().fold(f32::INFINITY, f32::min);
        assert_eq!(all.min, expected_min);
        assert_eq!(all.count, 10_001);
    }

    #[test]
    fn minmax_counts_and_ignores_non_finite() {
        let mut m = MinMax::new();
        m.observe(&[f32::NAN, 1.0, f32::INFINITY, -2.0, f32::NEG_INFINITY, 0.5]);
        assert_eq!((m.min, m.max, m.count, m.non_finite), (-2.0, 1.0, 3, 3));
        let mut only_bad = MinMax::new();
        only_bad.observe(&[f32::NAN; 20]);
        assert!(only_bad.is_empty());
        assert_eq!(only_bad.non_finite, 20);
        m.merge(&only_bad);
        assert_eq!((m.min, m.max, m.count, m.non_finite), (-2.0, 1.0, 3, 23));
        let mut empty = MinMax::new();
        empty.observe(&[]);
        assert_eq!(empty, MinMax::new());
        // Empty state serializes (JSON has no infinities).
        let json = serde_json::to_string(&empty).unwrap();
        assert_eq!(serde_json::from_str::<MinMax>(&json).unwrap(), empty);
    }

    #[test]
    fn moving_average_follows_the_formula() {
        let mut m = MovingAverageMinMax::new(0.5);
        m.observe(&[f32::NAN]);
        assert!(m.is_empty());
        m.observe(&[-1.0, 3.0]);
        m.observe(&[-3.0, 1.0]);
        assert_eq!((m.min(), m.max()), (-2.0, 2.0));
        m.observe(&[f32::NAN, f32::INFINITY]);
        assert_eq!((m.min(), m.max(), m.samples()), (-2.0, 2.0, 2));
        let mm = m.to_minmax();
        assert_eq!((mm.count, mm.non_finite), (4, 3));
        let mut huge = MovingAverageMinMax::new(f32::NAN);
        assert_eq!(huge.momentum(), DEFAULT_MOMENTUM);
        huge.observe(&[-f32::MAX, f32::MAX]);
        huge.observe(&[f32::MAX, -f32::MAX]);
        assert!(huge.min().is_finite() && huge.max().is_finite());
    }

    fn observe_in_chunks(values: &[f32], chunk: usize) -> Histogram {
        let mut h = Histogram::new(64);
        for c in values.chunks(chunk) {
            h.observe(c);
        }
        h
    }

    #[test]
    fn histogram_is_independent_of_how_the_values_were_split() {
        let mut values = sample(20_000, 2, 1.0);
        values.extend(sample(3000, 3, 1000.0)); // later samples widen the range a lot
        values.extend(sample(500, 4, 1e-3));
        let mut all = Histogram::new(64);
        all.observe(&values);
        assert_eq!(all.total(), values.len() as u64);
        for chunk in [1, 3, 999, 4096] {
            assert_eq!(observe_in_chunks(&values, chunk), all, "chunks of {chunk}");
        }
        // Merging partial histograms, in either order, gives the same counts.
        let (a, b) = values.split_at(12_345);
        let (mut left, mut right) = (Histogram::new(64), Histogram::new(64));
        left.observe(a);
        right.observe(b);
        let mut right_then_left = right.clone();
        right_then_left.merge(&left);
        left.merge(&right);
        assert_eq!(left.counts(), all.counts());
        assert_eq!(left, all);
        assert_eq!(right_then_left, all);
        let mut into_empty = Histogram::new(64);
        into_empty.merge(&all);
        assert_eq!(into_empty, all);
    }

    #[test]
    fn histogram_grid_is_the_finest_that_fits() {
        let mut h = Histogram::new(DEFAULT_BINS);
        h.observe(&[-1.0, 1.0]);
        let w = h.bin_width();
        assert!(w.log2().fract() == 0.0, "power of two");
        let span_bins = 2.0 / w;
        assert!((4096.0..=8192.0).contains(&span_bins), "{span_bins}");
        // Growth preserves the total and moves to the grid a fresh histogram would pick.
        h.observe(&[100.0, -0.5, 0.25]);
        assert_eq!(h.total(), 5);
        assert_eq!(h.counts().iter().sum::<u64>(), 5);
        let mut fresh = Histogram::new(DEFAULT_BINS);
        fresh.observe(&[100.0, -1.0, -0.5, 0.25, 1.0]);
        assert_eq!(h, fresh);
        assert!(h.lower() <= -1.0 && h.upper() > 100.0);
    }

    #[test]
    fn histogram_values_land_in_their_bins() {
        // Short and long inputs take different counting paths; so do inputs with NaN/Inf.
        for (n, bins) in [(5000, 16), (100_003, 2048)] {
            for poison in [false, true] {
                let mut values = sample(n, 5, 3.0);
                values.extend([-0.0, f32::from_bits(0x8000_0001), 1e-38]);
                if poison {
                    values[7] = f32::NAN;
                    values[n / 2] = f32::NEG_INFINITY;
                }
                let mut h = Histogram::new(bins);
                h.observe(&values);
                let w = f64::from(h.bin_width());
                let lower = f64::from(h.lower());
                let mut expected = vec![0u64; h.counts().len()];
                for &x in values.iter().filter(|x| x.is_finite()) {
                    // Both divisions are exact (by a power of two); a subtraction first would not be.
                    expected[((f64::from(x) / w).floor() - lower / w) as usize] += 1;
                }
                assert_eq!(h.counts(), &expected[..], "n {n} poison {poison}");
                let zeros = values.iter().filter(|&&x| x == 0.0).count() as u64;
                assert_eq!(h.zeros(), zeros);
                assert_eq!(h.stats().non_finite, if poison { 2 } else { 0 });
            }
        }
    }

    #[test]
    fn histogram_survives_degenerate_and_extreme_input() {
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN, f32::INFINITY],
            vec![0.0; 10],
            vec![-0.0, 0.0],
            vec![5.0; 3],
            vec![f32::MIN_POSITIVE / 8.0, f32::from_bits(1)],
            vec![-f32::MAX, f32::MAX, 0.0],
            vec![f32::MAX; 4],
            vec![1e30, 1e30 + 1e24, f32::NAN],
            vec![-1e-40, 3e38],
        ];
        for values in &cases {
            for bins in [0, 2, DEFAULT_BINS] {
                let mut h = Histogram::new(bins);
                h.observe(values);
                h.observe(values);
                let finite = values.iter().filter(|x| x.is_finite()).count() as u64;
                assert_eq!(h.total(), 2 * finite, "{values:?}");
                let non_finite = values.len() as u64 - finite;
                assert_eq!(h.summary().non_finite, 2 * non_finite, "{values:?}");
                assert_eq!(h.counts().iter().sum::<u64>(), 2 * finite);
                assert!(h.bin_width() > 0.0 && h.bin_width().is_finite());
                let s = h.summary();
                let json = serde_json::to_string(&s).unwrap();
                assert!(!json.contains("null"), "{json}");
                let back: Histogram =
                    serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
                assert_eq!(back, h);
                if finite > 0 {
                    let q = h.quantile(0.5).unwrap();
                    assert!(q >= h.stats().min && q <= h.stats().max);
                    assert!(h.abs_quantile(1.0).unwrap().is_finite());
                } else {
                    assert_eq!(h.quantile(0.5), None);
                }
            }
        }
    }

    #[test]
    fn corrupt_serialized_histograms_are_refused() {
        let mut h = Histogram::new(4);
        h.observe(&[1.0, 2.0]);
        let good = serde_json::to_value(&h).unwrap();
        let mut wrong_total = good.clone();
        wrong_total["stats"]["count"] = 3.into();
        let mut short = good.clone();
        short["counts"] = serde_json::json!([1, 1]);
        let mut outside = good.clone();
        outside["stats"]["max"] = 1e6.into();
        for bad in [wrong_total, short, outside] {
            assert!(serde_json::from_value::<Histogram>(bad).is_err());
        }
        assert_eq!(serde_json::from_value::<Histogram>(good).unwrap(), h);
    }

    #[test]
    fn quantiles_are_within_one_bin() {
        let values = sample(9999, 6, 10.0);
        let mut h = Histogram::new(256);
        h.observe(&values);
        let mut sorted = values.clone();
        sorted.sort_by(f32::total_cmp);
        let numpy = |s: &[f32], q: f64| {
            let r = q * (s.len() - 1) as f64;
            let (i, f) = (r.floor() as usize, r.fract());
            let j = (i + 1).min(s.len() - 1);
            f64::from(s[i]) + f * (f64::from(s[j]) - f64::from(s[i]))
        };
        let w = f64::from(h.bin_width());
        let mut abs: Vec<f32> = values.iter().map(|x| x.abs()).collect();
        abs.sort_by(f32::total_cmp);
        for q in [0.0, 0.001, 0.25, 0.5, 0.9, 0.99999, 1.0] {
            let ours = f64::from(h.quantile(q).unwrap());
            assert!((ours - numpy(&sorted, q)).abs() <= w, "q={q}");
            let ours_abs = f64::from(h.abs_quantile(q).unwrap());
            assert!((ours_abs - numpy(&abs, q)).abs() <= w, "|x| q={q}");
        }
        assert_eq!(h.quantile(1.0), Some(sorted[sorted.len() - 1]));
        assert_eq!(h.quantile(0.0), Some(sorted[0]));
    }
}
