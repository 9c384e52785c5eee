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
//! - a clipping search: for each block, the range is shrunk by each ratio of a grid and the
//!   one with the smallest squared error of the block kept (RTN is ratio 1, so the search
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

/// Clipping ratios the search tries (1.0 is plain RTN).
const CLIP_RATIOS: [f32; 12] = [
    1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.825, 0.8, 0.775, 0.75, 0.7,
];

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
    // 8-bit levels leave little to gain from clipping: a short grid keeps tables fast.
    let ratios: &[f32] = match (spec.algorithm, spec.bits) {
        (Algorithm::Rtn, _) => &CLIP_RATIOS[..1],
        (_, 8) => &CLIP_RATIOS[..3],
        _ => &CLIP_RATIOS,
    };
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
        let mut first = 0;
        while first < n {
            let count = per.min(n - first);
            let (l, lr) = std::mem::take(&mut levels_rest).split_at_mut(count * padded);
            let (s, sr) = std::mem::take(&mut scales_rest).split_at_mut(count * kb);
            let (z, zr) = std::mem::take(&mut zeros_rest).split_at_mut(count * kb);
            levels_rest = lr;
            scales_rest = sr;
            zeros_rest = zr;
            let columns = first..first + count;
            scope.spawn(move || {
                let mut column = vec![0f32; k];
                let mut trial = vec![0u8; block];
                for (j, c) in columns.enumerate() {
                    match layout {
                        Layout::KN => {
                            for (r, v) in column.iter_mut().enumerate() {
                                *v = values[r * n + c];
                            }
                        }
                        Layout::NK => column.copy_from_slice(&values[c * k..(c + 1) * k]),
                    }
                    for b in 0..kb {
                        let start = b * block;
                        let end = (start + block).min(k);
                        let chunk = &column[start..end];
                        let out = &mut l[j * padded + start..j * padded + start + block];
                        let mut best = (f64::INFINITY, 0f32, mid);
                        for &ratio in ratios {
                            let (scale, zero, err) =
                                quantize_block(chunk, &spec, ratio, &mut trial[..chunk.len()]);
                            if err < best.0 {
                                best = (err, scale, zero);
                                out[..chunk.len()].copy_from_slice(&trial[..chunk.len()]);
                            }
                        }
                        // K padding holds the zero point's level: it dequantizes to exactly 0.
                        out[chunk.len()..].fill(best.2);
                        s[j * kb + b] = best.1;
                        z[j * kb + b] = best.2;
                    }
                }
            });
            first += count;
        }
    });
    BlockQuantized {
        spec: BlockSpec { block, ..spec },
        k,
        n,
        levels,
        scales,
        zero_points,
    }
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
    BlockQuantized {
        spec: BlockSpec { block, ..spec },
        k,
        n,
        levels,
        scales,
        zero_points,
    }
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

impl BlockQuantized {
    /// `B` of `com.microsoft.MatMulNBits`: `[N, k_blocks, block * bits / 8]` bytes.
    pub fn matmul_nbits_b(&self) -> Vec<u8> {
        pack(self.levels.iter().copied(), self.spec.bits)
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
    fn nibbles_pack_even_index_low() {
        assert_eq!(pack_nibbles([1, 2, 3]), vec![0x21, 0x03]);
    }
}
