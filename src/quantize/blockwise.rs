//! Block-wise weight quantization, the parameter math of weight-only mode: a matrix `[K, N]`
//! (K the reduction axis) is cut, per output column, into blocks of `block` consecutive K
//! values; each block gets its own scale (and zero point when asymmetric) and its values are
//! stored in 4 or 8 bits. The quantized values are held unsigned (`u - zero_point` recovers
//! the signed level), the layout both output forms are packed from.
//!
//! Algorithms:
//! - round-to-nearest (RTN), exactly as ONNX Runtime's `MatMulNBitsQuantizer` does it: the
//!   symmetric scale is `absmax / -2^(bits-1)` so that the largest magnitude lands on the
//!   level that has no positive twin (−8 of [−8, 7]);
//! - a clipping search: for each block, the range is shrunk by a ratio and the one with the
//!   smallest squared error of the block kept, found coarse to fine (a grid of four ratios,
//!   then two refinements around the best; RTN is ratio 1, the grid's first, so the search
//!   is never worse than RTN on any block).

use serde::Serialize;

/// How blocks are chosen and rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Round to nearest on the block's full range.
    Rtn,
    /// Per-block grid search of the clipping ratio that minimises the block's squared error.
    Clip,
    /// GPTQ: rows quantized in order, each row's rounding error spread over the rows not yet
    /// quantized through the inverse Hessian `(XᵀX)⁻¹` of the layer's input on calibration
    /// data; block scales from the clipping search on the updated rows.
    Gptq,
}

impl Algorithm {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rtn => "rtn",
            Algorithm::Clip => "clip-search",
            Algorithm::Gptq => "gptq",
        }
    }
}

/// A weight's quantization settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSpec {
    /// 4 or 8.
    pub bits: u8,
    /// Values per block along K (the whole of K for per-channel).
    pub block: usize,
    /// Symmetric (implicit middle zero point) or asymmetric (a zero point per block).
    pub symmetric: bool,
    /// Rounding algorithm.
    pub algorithm: Algorithm,
}

/// A `[K, N]` matrix quantized in blocks along K, held per column.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockQuantized {
    /// The settings.
    pub spec: BlockSpec,
    /// Rows (the reduction axis).
    pub k: usize,
    /// Columns (outputs).
    pub n: usize,
    /// Unsigned levels, `[N][k_blocks * block]` (K padded with the zero point's level).
    pub levels: Vec<u8>,
    /// Scales, `[N][k_blocks]`.
    pub scales: Vec<f32>,
    /// Zero points (unsigned levels), `[N][k_blocks]`: `2^(bits-1)` everywhere when symmetric.
    pub zero_points: Vec<u8>,
    /// Σ v² over the float weight's values.
    pub signal: f64,
    /// Σ (v − dequantized v)² over the weight's values.
    pub noise: f64,
}

impl BlockQuantized {
    /// Blocks per column.
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.spec.block)
    }

    /// The value of element (k, n) as dequantization computes it.
    pub fn dequantized(&self, k: usize, n: usize) -> f32 {
        let kb = self.k_blocks();
        let b = k / self.spec.block;
        let level = self.levels[n * kb * self.spec.block + k];
        (f32::from(level) - f32::from(self.zero_points[n * kb + b])) * self.scales[n * kb + b]
    }

    /// The whole matrix dequantized, `[K, N]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for n in 0..self.n {
            for k in 0..self.k {
                out[k * self.n + n] = self.dequantized(k, n);
            }
        }
        out
    }

    /// SQNR of the dequantized weight against the float one it was quantized from, in dB.
    pub fn weight_sqnr_db(&self) -> f64 {
        super::params::sqnr_from_powers(self.signal, self.noise)
    }

    /// SQNR of the dequantized matrix against `values` (`[K, N]` row-major), in dB.
    pub fn sqnr_db(&self, values: &[f32]) -> f64 {
        let (mut signal, mut noise) = (0f64, 0f64);
        for n in 0..self.n {
            for k in 0..self.k {
                let v = f64::from(values[k * self.n + n]);
                let d = v - f64::from(self.dequantized(k, n));
                signal += v * v;
                noise += d * d;
            }
        }
        super::params::sqnr_from_powers(signal, noise)
    }
}

/// Clipping ratios GPTQ tries for each block's range (1.0 is plain RTN).
const CLIP_RATIOS: [f32; 12] = [
    1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.825, 0.8, 0.775, 0.75, 0.7,
];

/// How a block's clipping ratio is searched: every ratio of `grid`, then for each step of
/// `refine`, the best ratio so far moved up and down by the step (kept within the grid's
/// span). The 4-bit search reaches every multiple of 0.025 in [0.7, 1] in 8 trials where
/// trying them all takes 13, and the error is close enough to unimodal in the ratio that it
/// chooses as well (weight SQNR within 0.01 dB on the measured models).
#[derive(Debug, Clone, Copy)]
struct Search {
    grid: &'static [f32],
    refine: &'static [f32],
}

impl Search {
    /// The search for `spec`: ratio 1 alone for RTN; a short grid at 8 bits, whose levels
    /// leave little to gain from clipping (it keeps tables fast).
    fn of(spec: &BlockSpec) -> Search {
        let (grid, refine): (&[f32], &[f32]) = match (spec.algorithm, spec.bits) {
            (Algorithm::Rtn, _) => (&[1.0], &[]),
            (_, 8) => (&[1.0, 0.975, 0.95], &[]),
            _ => (&[1.0, 0.9, 0.8, 0.7], &[0.05, 0.025]),
        };
        Search { grid, refine }
    }

    /// Whether anything but ratio 1 is tried.
    fn searches(&self) -> bool {
        self.grid.len() > 1 || !self.refine.is_empty()
    }

    /// The two ratios a refinement by `step` tries around `center`: the same `f32`
    /// arithmetic in the scalar and the vectorised search.
    #[inline(always)]
    fn around(&self, center: f32, step: f32) -> [f32; 2] {
        let lo = self.grid.iter().copied().fold(1f32, f32::min);
        [(center + step).min(1.0), (center - step).max(lo)]
    }

    /// The ratio of least error, `error` giving a ratio's error (the first of equal errors
    /// wins, ratio 1 first of all).
    fn run(&self, mut error: impl FnMut(f32) -> f64) -> f32 {
        let mut best = (f64::INFINITY, 1f32);
        let mut consider = |ratio: f32, best: &mut (f64, f32)| {
            let e = error(ratio);
            if e < best.0 {
                *best = (e, ratio);
            }
        };
        for &ratio in self.grid {
            consider(ratio, &mut best);
        }
        for &step in self.refine {
            for ratio in self.around(best.1, step) {
                consider(ratio, &mut best);
            }
        }
        best.1
    }
}

/// Quantizes one block of `values` with the range shrunk by `ratio`: (levels, scale, zero
/// point, squared error).
fn quantize_block(
    values: &[f32],
    spec: &BlockSpec,
    ratio: f32,
    levels: &mut [u8],
) -> (f32, u8, f64) {
    let qmax_u = (1u32 << spec.bits) - 1;
    let mid = 1u32 << (spec.bits - 1);
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (scale, zero) = if spec.symmetric {
        // The value of largest magnitude, sign kept: it maps to -2^(bits-1), the level
        // without a positive twin, so the full range of levels is used.
        let extreme = finite.fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        (extreme * ratio / -(mid as f32), mid)
    } else {
        let (lo, hi) = finite.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = (lo * ratio, hi * ratio);
        let scale = (hi - lo) / qmax_u as f32;
        let zero = if scale == 0.0 {
            mid
        } else {
            (-lo / scale).round_ties_even().clamp(0.0, qmax_u as f32) as u32
        };
        (scale, zero)
    };
    let mut err = 0f64;
    for (v, l) in values.iter().zip(levels.iter_mut()) {
        let q = if scale == 0.0 || !scale.is_finite() {
            zero
        } else {
            // Half to even, as numpy's round (ONNX Runtime's quantizer) does.
            ((v / scale).round_ties_even() + zero as f32).clamp(0.0, qmax_u as f32) as u32
        };
        *l = q as u8;
        let d = f64::from(*v) - (f64::from(q) - f64::from(zero)) * f64::from(scale);
        if d.is_finite() {
            err += d * d;
        }
    }
    let scale = if scale.is_finite() { scale } else { 0.0 };
    (scale, zero as u8, err)
}

/// How a weight's values are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[K, N]` row-major: MatMul's B.
    KN,
    /// `[N, K]` row-major: Gemm's B with transB, an embedding table `[rows, dim]`.
    NK,
}

/// Quantizes `values`, a `[k, n]` row-major matrix, block-wise along K per column.
pub fn quantize(values: &[f32], k: usize, n: usize, spec: BlockSpec) -> BlockQuantized {
    quantize_laid_out(values, k, n, Layout::KN, spec)
}

/// Quantizes `values` holding a `K × N` matrix in `layout`, block-wise along K per column.
pub fn quantize_laid_out(
    values: &[f32],
    k: usize,
    n: usize,
    layout: Layout,
    spec: BlockSpec,
) -> BlockQuantized {
    let block = spec.block.max(1);
    let kb = k.div_ceil(block);
    let padded = kb * block;
    let mid = 1u8 << (spec.bits - 1);
    let mut levels = vec![0u8; n * padded];
    let mut scales = vec![0f32; n * kb];
    let mut zero_points = vec![mid; n * kb];
    // Per column, so that the totals are summed in one order whatever the thread count.
    let mut powers = vec![(0f64, 0f64); n];
    let search = Search::of(&spec);
    // Columns are independent: split them over the cores. Each worker writes its own
    // contiguous range of every output, so the result does not depend on the thread count.
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.div_ceil(64))
        .max(1);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut levels_rest = levels.as_mut_slice();
        let mut scales_rest = scales.as_mut_slice();
        let mut zeros_rest = zero_points.as_mut_slice();
        let mut powers_rest = powers.as_mut_slice();
        let mut first = 0;
        while first < n {
            let count = per.min(n - first);
            let (l, lr) = std::mem::take(&mut levels_rest).split_at_mut(count * padded);
            let (s, sr) = std::mem::take(&mut scales_rest).split_at_mut(count * kb);
            let (z, zr) = std::mem::take(&mut zeros_rest).split_at_mut(count * kb);
            let (p, pr) = std::mem::take(&mut powers_rest).split_at_mut(count);
            levels_rest = lr;
            scales_rest = sr;
            zeros_rest = zr;
            powers_rest = pr;
            let work = Columns {
                values,
                k,
                n,
                layout,
                spec: BlockSpec { block, ..spec },
                search,
                first,
            };
            scope.spawn(move || {
                work.run(Outputs {
                    levels: l,
                    scales: s,
                    zeros: z,
                    powers: p,
                })
            });
            first += count;
        }
    });
    let (signal, noise) = powers
        .iter()
        .fold((0f64, 0f64), |(s, e), (cs, ce)| (s + cs, e + ce));
    BlockQuantized {
        spec: BlockSpec { block, ..spec },
        k,
        n,
        levels,
        scales,
        zero_points,
        signal,
        noise,
    }
}

/// Columns quantized together, one per vector lane: the values of a block of 16 columns are
/// read row by row (16 contiguous floats of a `[K, N]` matrix), and every step of the search is
/// the same for each lane, so the compiler vectorises across columns and no sum is reordered.
const LANES: usize = 16;

/// One worker's share of [`quantize_laid_out`]: columns `first..` (as many as its output
/// slices hold).
#[derive(Clone, Copy)]
struct Columns<'a> {
    values: &'a [f32],
    k: usize,
    n: usize,
    layout: Layout,
    spec: BlockSpec,
    search: Search,
    first: usize,
}

/// A worker's outputs, for its columns.
struct Outputs<'a> {
    levels: &'a mut [u8],
    scales: &'a mut [f32],
    zeros: &'a mut [u8],
    powers: &'a mut [(f64, f64)],
}

impl Columns<'_> {
    fn run(self, out: Outputs) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.run_avx512(out) };
        } else if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { self.run_avx2(out) };
        }
        self.run_portable(out)
    }

    // The same IEEE operations in the same order on every path (Rust never contracts a
    // multiply and an add into an FMA), so the output does not depend on the CPU: the
    // feature-specific copies only use wider vectors.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(self, out: Outputs) {
        self.run_portable(out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(self, out: Outputs) {
        self.run_portable(out)
    }

    #[inline(always)]
    fn run_portable(self, out: Outputs) {
        let (k, block) = (self.k, self.spec.block);
        let kb = k.div_ceil(block);
        let padded = kb * block;
        let count = out.powers.len();
        // `[block][LANES]`: row r of the block for each lane's column; rows past K and lanes
        // past the last column hold 0, which changes no range and quantizes exactly (to the
        // zero point, the level K padding must hold).
        let mut tile = vec![0f32; block * LANES];
        let mut tile_levels = vec![0u8; block * LANES];
        out.powers.fill((0.0, 0.0));
        // Blocks outside, columns inside: the rows of one block are read left to right, a few
        // sequential streams, where walking down a `[K, N]` matrix's columns touches a new
        // page for every row and waits on memory (a third of the run time).
        for b in 0..kb {
            let from = b * block;
            let rows = block.min(k - from);
            let mut start = 0;
            while start < count {
                let width = LANES.min(count - start);
                let c0 = self.first + start;
                tile.fill(0.0);
                for r in 0..rows {
                    let lanes = &mut tile[r * LANES..r * LANES + width];
                    match self.layout {
                        // A copy of constant length is inlined; a call to memmove per row
                        // of 16 values cost a sixth of the whole run.
                        Layout::KN if width == LANES => {
                            let at = (from + r) * self.n + c0;
                            // The same row of the next block, a page or more away: fetched
                            // while this block is searched, which takes far longer than the
                            // memory's latency.
                            #[cfg(target_arch = "x86_64")]
                            if let Some(next) = self.values.get(at + block * self.n) {
                                // SAFETY: a prefetch of an element of the slice: it reads
                                // nothing and cannot fault.
                                unsafe {
                                    std::arch::x86_64::_mm_prefetch::<
                                        { std::arch::x86_64::_MM_HINT_T0 },
                                    >(
                                        (next as *const f32).cast::<i8>()
                                    )
                                };
                            }
                            let row: &[f32; LANES] =
                                self.values[at..at + LANES].try_into().expect("16 values");
                            let lanes: &mut [f32; LANES] =
                                lanes.try_into().expect("a full row of lanes");
                            *lanes = *row;
                        }
                        Layout::KN => {
                            let at = (from + r) * self.n + c0;
                            lanes.copy_from_slice(&self.values[at..at + width]);
                        }
                        Layout::NK => {
                            for (j, v) in lanes.iter_mut().enumerate() {
                                *v = self.values[(c0 + j) * k + from + r];
                            }
                        }
                    }
                }
                // Branch-free, so that it vectorises: the largest exponent field.
                let exponents = tile
                    .iter()
                    .fold(0u32, |m, v| m.max(v.to_bits() & 0x7f80_0000));
                let found = if exponents != 0x7f80_0000 {
                    search_lanes(&tile, &self.spec, self.search, &mut tile_levels)
                } else {
                    scalar_lanes(&tile, rows, &self.spec, self.search, &mut tile_levels)
                };
                for j in 0..width {
                    let c = start + j;
                    let column = &mut out.levels[c * padded + from..c * padded + from + block];
                    column.copy_from_slice(&tile_levels[j * block..(j + 1) * block]);
                    out.scales[c * kb + b] = found.scale[j];
                    out.zeros[c * kb + b] = found.zero[j];
                    out.powers[c].0 += f64::from(found.signal[j]);
                    out.powers[c].1 += f64::from(found.noise[j]);
                }
                start += width;
            }
        }
    }
}

/// Each lane's choice for one block (its levels, `[LANES][block]`, written to the caller's
/// buffer).
struct Found {
    scale: [f32; LANES],
    zero: [u8; LANES],
    signal: [f32; LANES],
    noise: [f32; LANES],
}

/// The search's best parameters so far, per lane.
struct Best {
    scale: [f32; LANES],
    zero: [f32; LANES],
    ratio: [f32; LANES],
    noise: [f32; LANES],
}

/// Adding and subtracting this rounds an `f32` of magnitude below 2²² to the nearest
/// integer, ties to even (the default rounding mode), in two vectorisable operations: what
/// `round_ties_even` computes, without a libm call per value on CPUs without SSE4.1.
const ROUNDER: f32 = 12_582_912.0; // 1.5 · 2²³

/// The level of `t = v / scale` (the quotient) with zero point `zero`, clamped to `[0, qmax]`.
#[inline(always)]
fn level_of(t: f32, zero: f32, qmax: f32) -> f32 {
    // Levels are at most 255, so anything beyond ±512 clamps to an end either way; the
    // bound keeps the rounding trick in its exact range (and an infinite quotient of a
    // subnormal scale finite).
    let t = t.clamp(-512.0, 512.0);
    (((t + ROUNDER) - ROUNDER) + zero).clamp(0.0, qmax)
}

/// The clipping search of one block of finite values, every lane at once: each ratio's
/// squared error found with the quotient taken as a product by the reciprocal (about twice
/// as fast as a division), then the chosen range rounded exactly.
#[inline(always)]
fn search_lanes(tile: &[f32], spec: &BlockSpec, search: Search, levels: &mut [u8]) -> Found {
    let qmax = ((1u32 << spec.bits) - 1) as f32;
    let mid = (1u32 << (spec.bits - 1)) as f32;
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    for row in tile.chunks_exact(LANES) {
        for j in 0..LANES {
            let v = row[j];
            if spec.symmetric {
                // The value of largest magnitude, sign kept: it maps to -2^(bits-1), the
                // level without a positive twin, so the full range of levels is used.
                if v.abs() > lo[j].abs() {
                    lo[j] = v;
                }
            } else {
                lo[j] = lo[j].min(v);
                hi[j] = hi[j].max(v);
            }
        }
    }
    let params = |ratio: &[f32; LANES], scale: &mut [f32; LANES], zero: &mut [f32; LANES]| {
        for j in 0..LANES {
            if spec.symmetric {
                scale[j] = lo[j] * ratio[j] / -mid;
                zero[j] = mid;
            } else {
                let (l, h) = (lo[j] * ratio[j], hi[j] * ratio[j]);
                let s = (h - l) / qmax;
                scale[j] = s;
                zero[j] = if s == 0.0 {
                    mid
                } else {
                    (-l / s).round_ties_even().clamp(0.0, qmax)
                };
            }
        }
    };
    let (mut scale, mut zero) = ([0f32; LANES], [0f32; LANES]);
    params(&[1.0; LANES], &mut scale, &mut zero);
    if search.searches() {
        let mut best = Best {
            scale,
            zero,
            ratio: [1.0; LANES],
            noise: [f32::INFINITY; LANES],
        };
        // The scalar `Search::run`, every lane at once: each lane's squared error at its own
        // ratio, and the lanes that improve take it. One loop, not a closure called from
        // three places: a closure LLVM does not inline is compiled for the baseline CPU,
        // without the AVX-512/AVX2 its caller is compiled for.
        let grid = search.grid.len();
        let mut down = [0f32; LANES];
        for trial in 0..grid + 2 * search.refine.len() {
            let ratio = if trial < grid {
                [search.grid[trial]; LANES]
            } else if (trial - grid).is_multiple_of(2) {
                // Both neighbours of the best so far, before either is tried.
                let step = search.refine[(trial - grid) / 2];
                let mut up = [0f32; LANES];
                for j in 0..LANES {
                    [up[j], down[j]] = search.around(best.ratio[j], step);
                }
                up
            } else {
                down
            };
            let ratio = &ratio;
            params(ratio, &mut scale, &mut zero);
            let mut inverse = [0f32; LANES];
            for j in 0..LANES {
                inverse[j] = if scale[j] == 0.0 { 0.0 } else { 1.0 / scale[j] };
            }
            // Four partial sums (rows by their index mod 4), so that the additions do not
            // wait on each other; added in a fixed order.
            // Named, not indexed by the row, so that they stay in registers.
            let (mut s0, mut s1, mut s2, mut s3) =
                ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            let error = |v: f32, j: usize| {
                let q = level_of(v * inverse[j], zero[j], qmax);
                let d = v - (q - zero[j]) * scale[j];
                d * d
            };
            let fours = tile.chunks_exact(4 * LANES);
            // A per-channel block (all of K) need not be a multiple of four rows.
            for row in fours.remainder().chunks_exact(LANES) {
                for j in 0..LANES {
                    s0[j] += error(row[j], j);
                }
            }
            for rows in fours {
                for j in 0..LANES {
                    s0[j] += error(rows[j], j);
                    s1[j] += error(rows[LANES + j], j);
                    s2[j] += error(rows[2 * LANES + j], j);
                    s3[j] += error(rows[3 * LANES + j], j);
                }
            }
            let mut noise = [0f32; LANES];
            for j in 0..LANES {
                noise[j] = (s0[j] + s1[j]) + (s2[j] + s3[j]);
            }
            for j in 0..LANES {
                // A zero scale (an all-zero column block) keeps ratio 1's parameters.
                if scale[j] != 0.0 && scale[j].is_finite() && noise[j] < best.noise[j] {
                    best.noise[j] = noise[j];
                    best.scale[j] = scale[j];
                    best.zero[j] = zero[j];
                    best.ratio[j] = ratio[j];
                }
            }
        }
        (scale, zero) = (best.scale, best.zero);
    }
    let (mut signal, mut noise) = ([0f32; LANES], [0f32; LANES]);
    let mut divisor = [1f32; LANES];
    let mut usable = [true; LANES];
    for j in 0..LANES {
        usable[j] = scale[j] != 0.0 && scale[j].is_finite();
        if usable[j] {
            divisor[j] = scale[j];
        }
    }
    let block = tile.len() / LANES;
    for (r, row) in tile.chunks_exact(LANES).enumerate() {
        let mut q = [0f32; LANES];
        for j in 0..LANES {
            let v = row[j];
            let l = level_of(v / divisor[j], zero[j], qmax);
            q[j] = if usable[j] { l } else { zero[j] };
            let d = v - (q[j] - zero[j]) * scale[j];
            signal[j] += v * v;
            noise[j] += d * d;
        }
        for j in 0..LANES {
            // In [0, 255] and integral: the conversion is exact.
            levels[j * block + r] = q[j] as i32 as u8;
        }
    }
    let mut found = Found {
        scale,
        zero: [0; LANES],
        signal,
        noise,
    };
    for j in 0..LANES {
        if !usable[j] {
            found.scale[j] = 0.0;
            found.noise[j] = signal[j];
        }
        found.zero[j] = zero[j] as u8;
    }
    found
}

/// [`search_lanes`] for a block holding a non-finite value, column by column with the
/// scalar search, which leaves non-finite values out of the range.
fn scalar_lanes(
    tile: &[f32],
    rows: usize,
    spec: &BlockSpec,
    search: Search,
    levels: &mut [u8],
) -> Found {
    let mut found = Found {
        scale: [0.0; LANES],
        zero: [0; LANES],
        signal: [0.0; LANES],
        noise: [0.0; LANES],
    };
    let block = tile.len() / LANES;
    let mut column = vec![0f32; block];
    let (mut trial, mut chosen) = (vec![0u8; block], vec![0u8; block]);
    for j in 0..LANES {
        for (r, v) in column.iter_mut().enumerate() {
            *v = tile[r * LANES + j];
        }
        let values = &column[..rows];
        let ratio = search.run(|r| quantize_block(values, spec, r, &mut trial[..rows]).2);
        let (scale, zero, err) = quantize_block(values, spec, ratio, &mut chosen[..rows]);
        chosen[rows..].fill(zero);
        levels[j * block..(j + 1) * block].copy_from_slice(&chosen);
        found.scale[j] = scale;
        found.zero[j] = zero;
        found.noise[j] = err as f32;
        found.signal[j] = values.iter().filter(|v| v.is_finite()).map(|v| v * v).sum();
    }
    found
}

/// The Gram matrix `XᵀX` of a layer input's rows, accumulated over calibration samples:
/// what GPTQ needs, `K²` numbers however many samples there are.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    /// Row length (the MatMul's K).
    pub k: usize,
    /// `XᵀX`, row-major `k × k`.
    pub sum: Vec<f64>,
    /// Rows accumulated.
    pub rows: u64,
}

impl Hessian {
    /// An empty accumulator for rows of `k` values.
    pub fn new(k: usize) -> Hessian {
        Hessian {
            k,
            sum: vec![0.0; k * k],
            rows: 0,
        }
    }

    /// Adds every row of `values` (a multiple of `k` values long): `XᵀX` of the rows as one
    /// matrix product (ndarray's blocked, vectorised GEMM), added to the running sum.
    pub fn add_rows(&mut self, values: &[f32]) {
        let k = self.k;
        let rows = values.len() / k.max(1);
        if rows == 0 {
            return;
        }
        let x = ndarray::Array2::from_shape_fn((rows, k), |(r, c)| {
            let v = values[r * k + c];
            if v.is_finite() {
                f64::from(v)
            } else {
                0.0
            }
        });
        let gram = x.t().dot(&x);
        for (h, g) in self.sum.iter_mut().zip(gram.iter()) {
            *h += g;
        }
        self.rows += rows as u64;
    }
}

/// Lower Cholesky factor of the symmetric positive definite `a` (`n × n`), `None` when it is
/// not positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for p in 0..j {
                sum -= l[i * n + p] * l[j * n + p];
            }
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), the form GPTQ's updates read.
fn inverse_upper_cholesky(h: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky(h, n)?;
    // L⁻¹, stored transposed (row c of `t` is column c of L⁻¹) so that every inner loop
    // below reads memory in order.
    let mut t = vec![0f64; n * n];
    for c in 0..n {
        t[c * n + c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let sum: f64 = l[i * n + c..i * n + i]
                .iter()
                .zip(&t[c * n + c..c * n + i])
                .map(|(a, b)| a * b)
                .sum();
            t[c * n + i] = -sum / l[i * n + i];
        }
    }
    // H⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) is the dot product of columns i and j of L⁻¹, which are
    // zero above their own index.
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = t[i * n + i..(i + 1) * n]
                .iter()
                .zip(&t[j * n + i..(j + 1) * n])
                .map(|(a, b)| a * b)
                .sum();
            inv[i * n + j] = sum;
            inv[j * n + i] = sum;
        }
    }
    let lower = cholesky(&inv, n)?;
    let mut upper = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            upper[j * n + i] = lower[i * n + j];
        }
    }
    Some(upper)
}

/// What GPTQ needs of a layer input's statistics, computed once per input and shared by
/// every weight that reads it (a transformer's Q, K and V projections).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqFactor {
    /// Row length.
    pub k: usize,
    /// Upper Cholesky factor of the damped inverse Hessian, `k × k`.
    pub upper: Vec<f64>,
    /// Inputs that were always zero: their weights cannot matter and are zeroed.
    pub dead: Vec<bool>,
}

impl GptqFactor {
    /// The factor of `hessian`, damped by 1 % of its mean diagonal (more when that is not
    /// enough to make it positive definite); `None` when even heavy damping fails.
    pub fn new(hessian: &Hessian) -> Option<GptqFactor> {
        let k = hessian.k;
        if hessian.rows == 0 {
            return None;
        }
        let mut h = vec![0f64; k * k];
        for i in 0..k {
            for j in i..k {
                h[i * k + j] = hessian.sum[i * k + j];
                h[j * k + i] = hessian.sum[i * k + j];
            }
        }
        let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] == 0.0).collect();
        for (i, &d) in dead.iter().enumerate() {
            if d {
                h[i * k + i] = 1.0;
            }
        }
        let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        for damp in [0.01, 0.1, 1.0] {
            let mut damped = h.clone();
            for i in 0..k {
                damped[i * k + i] += damp * mean_diag;
            }
            if let Some(upper) = inverse_upper_cholesky(&damped, k) {
                return Some(GptqFactor { k, upper, dead });
            }
        }
        None
    }
}

/// GPTQ of `values` (a `K × N` matrix in `layout`) with the factor of its input's Hessian:
/// rows (input features) are quantized in order, and each row's error, scaled by the inverse
/// Hessian, is subtracted from the rows after it, so that the layer's output on the
/// calibration inputs moves as little as possible. Without a usable factor, the clipping
/// search.
pub fn gptq(
    values: &[f32],
    k: usize,
    n: usize,
    layout: Layout,
    spec: BlockSpec,
    factor: Option<&GptqFactor>,
) -> BlockQuantized {
    let clip = BlockSpec {
        algorithm: Algorithm::Clip,
        ..spec
    };
    let Some(f) = factor.filter(|f| f.k == k) else {
        return quantize_laid_out(values, k, n, layout, clip);
    };
    let u = &f.upper;
    let mut w = vec![0f64; k * n];
    for r in 0..k {
        if f.dead[r] {
            continue;
        }
        for c in 0..n {
            w[r * n + c] = f64::from(match layout {
                Layout::KN => values[r * n + c],
                Layout::NK => values[c * k + r],
            });
        }
    }
    let block = spec.block.max(1);
    let kb = k.div_ceil(block);
    let padded = kb * block;
    let qmax = f64::from((1u32 << spec.bits) - 1);
    let mid = 1u8 << (spec.bits - 1);
    let mut levels = vec![mid; n * padded];
    let mut scales = vec![0f32; n * kb];
    let mut zero_points = vec![mid; n * kb];
    let mut column = vec![0f32; block];
    let mut trial = vec![0u8; block];
    let mut err = vec![0f64; n];
    for b in 0..kb {
        let start = b * block;
        let end = (start + block).min(k);
        // The block's parameters come from its rows as earlier updates left them.
        for c in 0..n {
            for (r, v) in (start..end).zip(column.iter_mut()) {
                *v = w[r * n + c] as f32;
            }
            let chunk = &column[..end - start];
            let mut best = (f64::INFINITY, 0f32, mid);
            for &ratio in CLIP_RATIOS.iter() {
                let (scale, zero, e) =
                    quantize_block(chunk, &clip, ratio, &mut trial[..chunk.len()]);
                if e < best.0 {
                    best = (e, scale, zero);
                }
            }
            scales[c * kb + b] = best.1;
            zero_points[c * kb + b] = best.2;
        }
        for r in start..end {
            let d = u[r * k + r];
            for c in 0..n {
                let s = f64::from(scales[c * kb + b]);
                let z = f64::from(zero_points[c * kb + b]);
                let v = w[r * n + c];
                let q = if s == 0.0 {
                    z
                } else {
                    ((v / s).round_ties_even() + z).clamp(0.0, qmax)
                };
                levels[c * padded + r] = q as u8;
                err[c] = (v - (q - z) * s) / d;
            }
            for j in r + 1..k {
                let f = u[r * k + j];
                if f == 0.0 {
                    continue;
                }
                let row = &mut w[j * n..(j + 1) * n];
                for (x, e) in row.iter_mut().zip(&err) {
                    *x -= f * e;
                }
            }
        }
    }
    let mut q = BlockQuantized {
        spec: BlockSpec { block, ..spec },
        k,
        n,
        levels,
        scales,
        zero_points,
        signal: 0.0,
        noise: 0.0,
    };
    for c in 0..n {
        for r in 0..k {
            let v = f64::from(match layout {
                Layout::KN => values[r * n + c],
                Layout::NK => values[c * k + r],
            });
            let d = v - f64::from(q.dequantized(r, c));
            q.signal += v * v;
            q.noise += d * d;
        }
    }
    q
}

/// Packs 4-bit values two per byte, the element of even index in the low nibble (ONNX's INT4
/// layout and ONNX Runtime's MatMulNBits blobs alike); an odd count ends with a zero nibble.
pub fn pack_nibbles(values: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pending: Option<u8> = None;
    for v in values {
        match pending.take() {
            None => pending = Some(v & 0x0F),
            Some(low) => out.push(low | ((v & 0x0F) << 4)),
        }
    }
    if let Some(low) = pending {
        out.push(low);
    }
    out
}

/// The packed bytes of `levels` at `bits` per value.
pub fn pack(levels: impl IntoIterator<Item = u8>, bits: u8) -> Vec<u8> {
    if bits == 4 {
        pack_nibbles(levels)
    } else {
        levels.into_iter().collect()
    }
}

/// [`pack`] of a buffer of levels, in place: the packed bytes overwrite the levels they come
/// from, so that packing a weight of a billion values holds no second copy of it. Pairs are
/// packed a chunk at a time through a local copy, which lets the compiler vectorise (the
/// iterator form costs about a nanosecond per value, seconds on a model of billions of
/// weights).
pub fn pack_in_place(mut levels: Vec<u8>, bits: u8) -> Vec<u8> {
    if bits != 4 {
        return levels;
    }
    const CHUNK: usize = 64;
    let len = levels.len();
    let mut chunk = [0u8; 2 * CHUNK];
    let mut at = 0;
    while 2 * (at + CHUNK) <= len {
        chunk.copy_from_slice(&levels[2 * at..2 * (at + CHUNK)]);
        // Writes land at or before the values they are made from, which were copied out.
        for (out, p) in levels[at..at + CHUNK].iter_mut().zip(chunk.chunks_exact(2)) {
            *out = (p[0] & 0x0F) | (p[1] << 4);
        }
        at += CHUNK;
    }
    while 2 * at + 1 < len {
        levels[at] = (levels[2 * at] & 0x0F) | (levels[2 * at + 1] << 4);
        at += 1;
    }
    if len % 2 == 1 {
        levels[at] = levels[len - 1] & 0x0F;
    }
    levels.truncate(len.div_ceil(2));
    levels.shrink_to_fit();
    levels
}

impl BlockQuantized {
    /// `B` of `com.microsoft.MatMulNBits`: `[N, k_blocks, block * bits / 8]` bytes, packed
    /// in the levels' own buffer (taken, leaving the levels empty).
    pub fn take_matmul_nbits_b(&mut self) -> Vec<u8> {
        pack_in_place(std::mem::take(&mut self.levels), self.spec.bits)
    }

    /// `zero_points` of MatMulNBits: `[N, ceil(k_blocks * bits / 8)]` bytes, each column
    /// packed on its own.
    pub fn matmul_nbits_zero_points(&self) -> Vec<u8> {
        let kb = self.k_blocks();
        (0..self.n)
            .flat_map(|c| {
                pack(
                    self.zero_points[c * kb..(c + 1) * kb].iter().copied(),
                    self.spec.bits,
                )
            })
            .collect()
    }

    /// Levels in `[K, N]` row-major order (no padding), as the standard form stores them,
    /// shifted to signed two's complement when symmetric.
    pub fn standard_levels(&self) -> Vec<u8> {
        let kb = self.k_blocks();
        let padded = kb * self.spec.block;
        let mid = 1u8 << (self.spec.bits - 1);
        let mut out = Vec::with_capacity(self.k * self.n);
        for k in 0..self.k {
            for c in 0..self.n {
                let l = self.levels[c * padded + k];
                out.push(if self.spec.symmetric {
                    l.wrapping_sub(mid)
                } else {
                    l
                });
            }
        }
        out
    }

    /// Scales `[k_blocks, N]` (the standard form's layout, transposed from the per-column one).
    pub fn standard_scales(&self) -> Vec<f32> {
        let kb = self.k_blocks();
        let mut out = Vec::with_capacity(kb * self.n);
        for b in 0..kb {
            for c in 0..self.n {
                out.push(self.scales[c * kb + b]);
            }
        }
        out
    }

    /// Levels `[N, K]` row-major (no padding): an embedding table's rows, shifted to signed
    /// two's complement when `signed`.
    pub fn row_levels(&self, signed: bool) -> Vec<u8> {
        let padded = self.k_blocks() * self.spec.block;
        let mid = 1u8 << (self.spec.bits - 1);
        let mut out = Vec::with_capacity(self.k * self.n);
        for c in 0..self.n {
            out.extend(
                self.levels[c * padded..c * padded + self.k]
                    .iter()
                    .map(|&l| if signed { l.wrapping_sub(mid) } else { l }),
            );
        }
        out
    }

    /// Zero points `[k_blocks, N]` as levels.
    pub fn standard_zero_points(&self) -> Vec<u8> {
        let kb = self.k_blocks();
        let mut out = Vec::with_capacity(kb * self.n);
        for b in 0..kb {
            for c in 0..self.n {
                out.push(self.zero_points[c * kb + b]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bits: u8, block: usize, symmetric: bool, algorithm: Algorithm) -> BlockSpec {
        BlockSpec {
            bits,
            block,
            symmetric,
            algorithm,
        }
    }

    #[test]
    fn symmetric_rtn_maps_the_largest_magnitude_to_the_lowest_level() {
        // One column, K = 4, block 4: extreme -2.0 -> scale 2/8 = 0.25, level 0.
        let q = quantize(
            &[1.0, -2.0, 0.5, 0.0],
            4,
            1,
            spec(4, 4, true, Algorithm::Rtn),
        );
        assert_eq!(q.scales, vec![0.25]);
        assert_eq!(q.zero_points, vec![8]);
        assert_eq!(q.levels, vec![12, 0, 10, 8]);
        assert_eq!(q.dequantize(), vec![1.0, -2.0, 0.5, 0.0]);
    }

    #[test]
    fn k_not_divisible_by_the_block_pads_with_the_zero_level() {
        let values: Vec<f32> = (0..5).map(|v| v as f32 - 2.0).collect();
        let q = quantize(&values, 5, 1, spec(4, 4, false, Algorithm::Rtn));
        assert_eq!(q.k_blocks(), 2);
        assert_eq!(q.levels.len(), 8);
        assert_eq!(q.levels[5..], [q.zero_points[1]; 3]);
        assert!(q.sqnr_db(&values) > 30.0);
    }

    /// The reference the vectorised search must reproduce: every block of every column
    /// through the scalar `quantize_block`, keeping the first ratio of least error.
    fn scalar_reference(
        values: &[f32],
        k: usize,
        n: usize,
        layout: Layout,
        spec: BlockSpec,
    ) -> BlockQuantized {
        let kb = k.div_ceil(spec.block);
        let padded = kb * spec.block;
        let mid = 1u8 << (spec.bits - 1);
        let mut q = BlockQuantized {
            spec,
            k,
            n,
            levels: vec![0; n * padded],
            scales: vec![0.0; n * kb],
            zero_points: vec![mid; n * kb],
            signal: 0.0,
            noise: 0.0,
        };
        let search = Search::of(&spec);
        for c in 0..n {
            let column: Vec<f32> = (0..k)
                .map(|r| match layout {
                    Layout::KN => values[r * n + c],
                    Layout::NK => values[c * k + r],
                })
                .collect();
            for b in 0..kb {
                let chunk = &column[b * spec.block..((b + 1) * spec.block).min(k)];
                let mut trial = vec![0u8; chunk.len()];
                let ratio = search.run(|r| quantize_block(chunk, &spec, r, &mut trial).2);
                let (scale, zero, _) = quantize_block(chunk, &spec, ratio, &mut trial);
                let at = c * padded + b * spec.block;
                q.levels[at..at + chunk.len()].copy_from_slice(&trial);
                q.levels[at + chunk.len()..at + spec.block].fill(zero);
                q.scales[c * kb + b] = scale;
                q.zero_points[c * kb + b] = zero;
            }
        }
        q
    }

    /// Deterministic values with a spread of magnitudes, an all-zero column and outliers.
    fn test_matrix(k: usize, n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..k * n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let u = (x as f32 / u32::MAX as f32) - 0.5;
                if i % n == 3 {
                    0.0
                } else if x.is_multiple_of(97) {
                    u * 40.0
                } else {
                    u * 0.1
                }
            })
            .collect()
    }

    #[test]
    fn vectorised_rtn_equals_the_scalar_rounding_exactly() {
        for (k, n, block) in [
            (64, 40, 32),
            (70, 17, 16),
            (300, 33, 256),
            (5, 1, 16),
            (70, 5, 70),
        ] {
            for layout in [Layout::KN, Layout::NK] {
                for (bits, symmetric) in [(4, true), (4, false), (8, true), (8, false)] {
                    let values = test_matrix(k, n, (k * n) as u32);
                    let s = spec(bits, block, symmetric, Algorithm::Rtn);
                    let fast = quantize_laid_out(&values, k, n, layout, s);
                    let slow = scalar_reference(&values, k, n, layout, s);
                    let case =
                        format!("k {k} n {n} block {block} {layout:?} {bits}-bit sym {symmetric}");
                    assert_eq!(fast.levels, slow.levels, "{case}");
                    assert_eq!(fast.scales, slow.scales, "{case}");
                    assert_eq!(fast.zero_points, slow.zero_points, "{case}");
                    // The SQNR reported from the kernel's own sums is the one of the result.
                    let kn: Vec<f32> = match layout {
                        Layout::KN => values.clone(),
                        Layout::NK => (0..k * n).map(|i| values[(i % n) * k + i / n]).collect(),
                    };
                    let (ours, truth) = (fast.weight_sqnr_db(), fast.sqnr_db(&kn));
                    assert!((ours - truth).abs() < 1e-3, "{case}: {ours} vs {truth}");
                }
            }
        }
    }

    #[test]
    fn vectorised_clip_search_matches_the_scalar_search() {
        for ((k, n, block), layout) in [(96, 37, 32), (70, 9, 70)]
            .into_iter()
            .flat_map(|shape| [(shape, Layout::KN), (shape, Layout::NK)])
        {
            for (bits, symmetric) in [(4, true), (4, false), (8, true)] {
                let mut values = test_matrix(k, n, 7);
                // A non-finite value takes its block through the scalar path.
                values[5] = f32::NAN;
                let s = spec(bits, block, symmetric, Algorithm::Clip);
                let fast = quantize_laid_out(&values, k, n, layout, s);
                let slow = scalar_reference(&values, k, n, layout, s);
                // The search ranks ratios with f32 sums of a reciprocal's products: a choice may
                // differ from the f64 reference only between ratios of (nearly) equal error.
                let same = fast
                    .scales
                    .iter()
                    .zip(&slow.scales)
                    .filter(|(a, b)| a == b)
                    .count();
                assert!(
                    same * 100 >= fast.scales.len() * 98,
                    "{layout:?} {bits} {symmetric}: {same} of {}",
                    fast.scales.len()
                );
                let finite: Vec<f32> = values
                    .iter()
                    .map(|v| if v.is_finite() { *v } else { 0.0 })
                    .collect();
                let kn: Vec<f32> = match layout {
                    Layout::KN => finite,
                    Layout::NK => (0..k * n).map(|i| finite[(i % n) * k + i / n]).collect(),
                };
                let rtn = quantize_laid_out(
                    &values,
                    k,
                    n,
                    layout,
                    BlockSpec {
                        algorithm: Algorithm::Rtn,
                        ..s
                    },
                );
                assert!(fast.sqnr_db(&kn) >= rtn.sqnr_db(&kn) - 1e-6);
                assert!((fast.sqnr_db(&kn) - slow.sqnr_db(&kn)).abs() < 0.01);
            }
        }
    }

    #[test]
    fn clip_search_is_never_worse_than_rtn() {
        // A block with an outlier: clipping it helps the other 31 values.
        let mut values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
            .collect();
        values[3] = 5.0;
        let rtn = quantize(&values, 32, 2, spec(4, 32, true, Algorithm::Rtn));
        let clip = quantize(&values, 32, 2, spec(4, 32, true, Algorithm::Clip));
        assert!(clip.sqnr_db(&values) >= rtn.sqnr_db(&values));
    }

    #[test]
    fn gptq_lowers_the_output_error_on_the_inputs_it_saw() {
        // Correlated inputs: x1 ≈ x0, so an error on one row can be compensated on the other.
        let (k, n) = (32, 8);
        let mut rng = 1u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let mut xs = Vec::new();
        for _ in 0..256 {
            let base = next();
            xs.extend((0..k).map(|i| {
                if i % 2 == 0 {
                    base
                } else {
                    base + 0.05 * next()
                }
            }));
        }
        let mut h = Hessian::new(k);
        h.add_rows(&xs);
        let output_error = |q: &BlockQuantized| {
            let dq = q.dequantize();
            let mut e = 0f64;
            for x in xs.chunks_exact(k) {
                for c in 0..n {
                    let d: f32 = (0..k).map(|r| x[r] * (w[r * n + c] - dq[r * n + c])).sum();
                    e += f64::from(d * d);
                }
            }
            e
        };
        let s = spec(4, 16, true, Algorithm::Gptq);
        let g = gptq(&w, k, n, Layout::KN, s, GptqFactor::new(&h).as_ref());
        let c = quantize(&w, k, n, spec(4, 16, true, Algorithm::Clip));
        assert!(
            output_error(&g) < output_error(&c) * 0.8,
            "{} vs {}",
            output_error(&g),
            output_error(&c)
        );
    }

    #[test]
    fn in_place_packing_equals_the_iterator_form() {
        // Around the chunk of 128 levels, odd and even tails.
        for len in [0, 1, 2, 7, 64, 65, 127, 128, 129, 130, 300, 1001] {
            let levels: Vec<u8> = (0..len).map(|i| (i * 7 % 16) as u8).collect();
            for bits in [4, 8] {
                assert_eq!(
                    pack_in_place(levels.clone(), bits),
                    pack(levels.iter().copied(), bits),
                    "{len} {bits}"
                );
            }
        }
    }

    #[test]
    fn nibbles_pack_even_index_low() {
        assert_eq!(pack_nibbles([1, 2, 3]), vec![0x21, 0x03]);
    }
}
