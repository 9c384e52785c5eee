//! Quantization parameters: activation scale/zero point from a range, and symmetric int8
//! weights per channel.

use serde::{Deserialize, Serialize};

/// The integer type activations are quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActType {
    /// uint8, asymmetric (ONNX Runtime's default for activations).
    U8,
    /// int8, symmetric (zero point 0).
    S8,
    /// uint16, asymmetric (QuantizeLinear-21; no int8 kernel runs it, but 256x finer steps).
    U16,
    /// int16, symmetric (zero point 0).
    S16,
}

impl ActType {
    /// Smallest and largest integer value.
    pub fn qrange(self) -> (i32, i32) {
        match self {
            ActType::U8 => (0, 255),
            ActType::S8 => (-128, 127),
            ActType::U16 => (0, 65535),
            ActType::S16 => (-32768, 32767),
        }
    }

    /// Whether zero maps to zero (signed types here are always symmetric).
    pub fn is_signed(self) -> bool {
        matches!(self, ActType::S8 | ActType::S16)
    }

    /// Whether this is a 16-bit type, which needs opset 21.
    pub fn is_16_bit(self) -> bool {
        matches!(self, ActType::U16 | ActType::S16)
    }
}

/// Scale and zero point of one quantized activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActParams {
    /// Scale.
    pub scale: f32,
    /// Zero point, in the integer type's range.
    pub zero_point: i32,
    /// The integer type.
    pub ty: ActType,
}

/// Smallest range width used for a degenerate tensor, so that the scale is never zero.
const MIN_WIDTH: f32 = 1e-6;

impl ActParams {
    /// Parameters covering `[lo, hi]`, widened to include 0 (so that zero padding and ReLU are
    /// exact) and to a minimum width. Signed types are symmetric.
    pub fn from_range(lo: f32, hi: f32, ty: ActType) -> ActParams {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let (qmin, qmax) = ty.qrange();
        if ty.is_signed() {
            let a = lo.abs().max(hi.abs()).max(MIN_WIDTH / 2.0);
            return ActParams {
                // [-127, 127] (and [-32767, 32767]): the range stays symmetric.
                scale: a / qmax as f32,
                zero_point: 0,
                ty,
            };
        }
        let steps = (qmax - qmin) as f32;
        let width = (hi - lo).max(MIN_WIDTH);
        let scale = width / steps;
        let zero_point = (-lo / scale).round().clamp(0.0, steps) as i32;
        ActParams {
            scale,
            zero_point,
            ty,
        }
    }

    /// Parameters covering `[-a, a]` with `a = max(|lo|, |hi|)`: zero maps to the middle of the
    /// integer range (128 for uint8, 32768 for uint16, 0 for the signed types, which are always
    /// symmetric here).
    pub fn symmetric(lo: f32, hi: f32, ty: ActType) -> ActParams {
        let a = lo.abs().max(hi.abs()).max(MIN_WIDTH / 2.0);
        if ty.is_signed() {
            return ActParams::from_range(-a, a, ty);
        }
        let (_, qmax) = ty.qrange();
        ActParams {
            scale: 2.0 * a / qmax as f32,
            zero_point: (qmax + 1) / 2,
            ty,
        }
    }

    /// Smallest and largest integer value.
    pub fn qrange(&self) -> (i32, i32) {
        self.ty.qrange()
    }

    /// The same parameters with the scale lowered by the few ulps it takes for `1 / scale`,
    /// evaluated in f32, to reach the integer it approximates (255 for `[0, 1]` in uint8).
    /// ONNX Runtime's QLinearSoftmax requantizes by `floor(1 / y_scale)`: the f32 nearest
    /// 1/255 lies above it, the floor gives 254, and every probability comes out 254/255 of
    /// its value (digits MLP: 42.9 instead of 44.2 dB). A calibrated range ending just below
    /// 1.0 never hits this, which is why ONNX Runtime's own files did not.
    pub fn with_integer_reciprocal(self) -> ActParams {
        let want = (1.0 / self.scale as f64).round();
        if ((1.0 / self.scale as f64) - want).abs() > 1e-4 * want {
            return self;
        }
        let mut scale = self.scale;
        // A handful of steps at most: each ulp moves 1/scale by about want * 6e-8.
        for _ in 0..8 {
            if (1.0 / scale).floor() >= want as f32 {
                return ActParams { scale, ..self };
            }
            scale = f32::from_bits(scale.to_bits() - 1);
        }
        self
    }

    /// Whether the quantized values can represent no negative number, so that a following
    /// Relu is a no-op.
    pub fn clamps_negatives(&self) -> bool {
        self.zero_point == self.qrange().0
    }
}

/// A weight quantized to symmetric int8 in [-127, 127], with one scale per channel along
/// `axis` (or one for the whole tensor when `axis` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// The int8 values, in the original layout.
    pub values: Vec<i8>,
    /// Scales: one per channel, or one.
    pub scales: Vec<f32>,
    /// The channel axis.
    pub axis: Option<usize>,
}

/// Number of channels and the stride structure of `axis` in a tensor of `dims`:
/// (outer, channels, inner) with index = (o * channels + c) * inner + i.
fn split_axis(dims: &[i64], axis: usize) -> (usize, usize, usize) {
    let d: Vec<usize> = dims.iter().map(|&v| v.max(0) as usize).collect();
    let outer = d[..axis].iter().product();
    let inner = d[axis + 1..].iter().product();
    (outer, d[axis], inner)
}

/// The channel of every element, for per-axis operations.
fn for_each_channel(dims: &[i64], axis: Option<usize>, n: usize, mut f: impl FnMut(usize, usize)) {
    match axis {
        None => (0..n).for_each(|i| f(i, 0)),
        Some(axis) => {
            let (outer, channels, inner) = split_axis(dims, axis);
            for o in 0..outer {
                for c in 0..channels {
                    let base = (o * channels + c) * inner;
                    for i in 0..inner {
                        f(base + i, c);
                    }
                }
            }
        }
    }
}

/// Number of channels along `axis` (1 when per tensor).
pub fn channels(dims: &[i64], axis: Option<usize>) -> usize {
    axis.map(|a| dims[a].max(0) as usize).unwrap_or(1)
}

/// Quantizes `values` (shaped `dims`) symmetric int8 per channel along `axis`.
pub fn quantize_weight(values: &[f32], dims: &[i64], axis: Option<usize>) -> QuantizedWeight {
    quantize_weight_to(values, dims, axis, 127)
}

/// Quantizes `values` symmetric into `[-qmax, qmax]` per channel along `axis` (`qmax` 63 is
/// the reduced range that avoids int16 saturation in uint8 × int8 kernels without VNNI).
pub fn quantize_weight_to(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
    qmax: i8,
) -> QuantizedWeight {
    let qmax = f32::from(qmax.max(1));
    let mut max_abs = vec![0f32; channels(dims, axis)];
    for_each_channel(dims, axis, values.len(), |i, c| {
        let v = values[i];
        if v.is_finite() {
            max_abs[c] = max_abs[c].max(v.abs());
        }
    });
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m > 0.0 { m / qmax } else { 1.0 })
        .collect();
    requantize_to(values, dims, axis, scales, qmax)
}

/// Signal-to-quantization-noise ratio of a quantized weight against its float values, in dB
/// (infinite when exact).
pub fn weight_sqnr_db(values: &[f32], q: &QuantizedWeight, dims: &[i64]) -> f64 {
    let (mut signal, mut noise) = (0f64, 0f64);
    for_each_channel(dims, q.axis, values.len(), |i, c| {
        let v = f64::from(values[i]);
        if v.is_finite() {
            let d = v - f64::from(q.values[i]) * f64::from(q.scales[c]);
            signal += v * v;
            noise += d * d;
        }
    });
    sqnr_from_powers(signal, noise)
}

/// `10·log10(signal / noise)`, infinite when there is no noise.
pub fn sqnr_from_powers(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Quantizes `values` with the given per-channel scales.
pub fn requantize(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
    scales: Vec<f32>,
) -> QuantizedWeight {
    requantize_to(values, dims, axis, scales, 127.0)
}

fn requantize_to(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
    scales: Vec<f32>,
    qmax: f32,
) -> QuantizedWeight {
    let mut q = vec![0i8; values.len()];
    for_each_channel(dims, axis, values.len(), |i, c| {
        q[i] = (values[i] / scales[c]).round_ties_even().clamp(-qmax, qmax) as i8;
    });
    QuantizedWeight {
        values: q,
        scales,
        axis,
    }
}

/// Int32 bias values and their per-channel scales.
pub type QuantizedBias = (Vec<i32>, Vec<f32>);
/// Channels whose weight scale must grow, with the smallest scale that makes the bias fit.
pub type ScaleRaises = Vec<(usize, f32)>;

/// Quantizes a bias to int32 with scale `input_scale × weight_scale[c]`. Where a value would
/// not fit in int32, returns the channels whose weight scale must grow (and by how much the
/// scale must at least be) instead.
pub fn quantize_bias(
    bias: &[f32],
    input_scale: f32,
    weight_scales: &[f32],
    alpha: f32,
) -> Result<QuantizedBias, ScaleRaises> {
    const LIMIT: f64 = (i32::MAX - 1) as f64;
    let per = |c: usize| weight_scales[if weight_scales.len() == 1 { 0 } else { c }];
    let scales: Vec<f32> = (0..bias.len())
        .map(|c| input_scale * per(c) * alpha)
        .collect();
    let mut overflow = Vec::new();
    let q: Vec<i32> = bias
        .iter()
        .zip(&scales)
        .enumerate()
        .map(|(c, (&b, &s))| {
            let v = (b as f64 / s as f64).round();
            if v.abs() > LIMIT || !v.is_finite() {
                // The weight scale that makes |b| / (s_in * s_w * alpha) fit, with headroom.
                let needed = (b.abs() as f64 / (input_scale as f64 * alpha as f64 * LIMIT)) * 1.01;
                overflow.push((c, needed as f32));
                0
            } else {
                v as i32
            }
        })
        .collect();
    if overflow.is_empty() {
        Ok((q, scales))
    } else {
        Err(overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_params_include_zero_and_map_it_exactly() {
        let p = ActParams::from_range(0.5, 6.0, ActType::U8);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-9);
        let p = ActParams::from_range(-1.0, 3.0, ActType::U8);
        assert_eq!(p.zero_point, 64);
        let p = ActParams::from_range(0.0, 0.0, ActType::U8);
        assert!(p.scale > 0.0);
        let p = ActParams::from_range(-2.0, 1.0, ActType::S8);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 2.0 / 127.0).abs() < 1e-9);
        // 16-bit: the same rules, 65535 steps.
        let p = ActParams::from_range(-1.0, 3.0, ActType::U16);
        assert!((p.scale - 4.0 / 65535.0).abs() < 1e-9);
        assert_eq!(p.zero_point, 16384);
        let p = ActParams::from_range(-2.0, 1.0, ActType::S16);
        assert_eq!((p.zero_point, p.scale), (0, 2.0 / 32767.0));
        let p = ActParams::symmetric(-1.0, 0.5, ActType::U16);
        assert_eq!(p.zero_point, 32768);
    }

    #[test]
    fn probability_scales_have_an_exact_integer_reciprocal_in_f32() {
        for ty in [ActType::U8, ActType::S8, ActType::U16, ActType::S16] {
            let plain = ActParams::from_range(0.0, 1.0, ty);
            let p = plain.with_integer_reciprocal();
            let steps = if ty.is_signed() {
                ty.qrange().1
            } else {
                ty.qrange().1 - ty.qrange().0
            };
            // What ONNX Runtime's QLinearSoftmax computes from the scale.
            assert_eq!((1.0f32 / p.scale).floor(), steps as f32, "{ty:?}");
            assert!(
                p.scale <= plain.scale && p.scale >= plain.scale * (1.0 - 1e-6),
                "{ty:?}"
            );
            assert_eq!(p.zero_point, plain.zero_point);
        }
        // The f32 nearest 1/255 is above it: the case that needs the nudge.
        assert_eq!(
            (1.0f32 / ActParams::from_range(0.0, 1.0, ActType::U8).scale).floor(),
            254.0
        );
        // A scale far from any reciprocal of an integer is left alone.
        let p = ActParams::from_range(-1.3, 2.9, ActType::U8);
        assert_eq!(p.with_integer_reciprocal(), p);
    }

    #[test]
    fn weights_quantize_per_channel_along_the_axis() {
        // [2, 3] with axis 0: channel 0 max 1.0, channel 1 max 4.0.
        let w = [0.5, -1.0, 0.25, 4.0, 2.0, -4.0];
        let q = quantize_weight(&w, &[2, 3], Some(0));
        assert_eq!(q.scales, vec![1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q.values, vec![64, -127, 32, 127, 64, -127]);
        // Axis 1 of the same tensor: columns.
        let q = quantize_weight(&w, &[2, 3], Some(1));
        assert_eq!(q.scales.len(), 3);
        assert_eq!(q.values[3], 127);
        // An all-zero channel gets scale 1, not 0.
        let q = quantize_weight(&[0.0, 0.0, 1.0, 1.0], &[2, 2], Some(0));
        assert_eq!(q.scales[0], 1.0);
    }

    #[test]
    fn bias_overflow_names_the_channel_and_a_sufficient_scale() {
        let r = quantize_bias(&[1.0, 1e6], 1e-3, &[1e-3, 1e-6], 1.0);
        let over = r.unwrap_err();
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].0, 1);
        let (q, _) = quantize_bias(&[1.0, 1e6], 1e-3, &[1e-3, over[0].1], 1.0).unwrap();
        assert!(q[1].unsigned_abs() < i32::MAX as u32);
    }
}
