//! Quantization policy as data: for each op type, what each input is (activation, weight with
//! its channel axis, bias, or left alone) and how the output's quantization parameters are
//! chosen. The planner is generic over this table, the way ONNX Runtime's quantizer registry
//! maps op types to quantizer classes, but in one readable list.

/// What one input of an op is, for quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    /// A float activation: gets its own calibrated range, QuantizeLinear/DequantizeLinear.
    Act,
    /// A constant weight, quantized symmetric int8 along `Axis` (per channel) or per tensor.
    Weight(Axis),
    /// A constant bias, quantized to int32 with scale = input scale × weight scale.
    Bias,
    /// Not quantized (shapes, indices, axes, scalar parameters).
    Skip,
}

/// The output-channel axis of a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Always this axis (Conv: 0, ConvTranspose: 1).
    Fixed(usize),
    /// Gemm's B: axis 0 when `transB` is set, else 1.
    GemmB,
    /// MatMul's B: its last axis (output features).
    Last,
}

/// How an op's outputs get their quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputRole {
    /// Own calibrated range.
    Own,
    /// The same scale and zero point as input `i` (data movement: values are not changed).
    SameAsInput(usize),
    /// A range known from the op's definition.
    FixedRange(f32, f32),
}

/// Quantization rule of one op type of the default domain.
#[derive(Debug, Clone, Copy)]
pub struct OpRule {
    /// ONNX op type.
    pub op: &'static str,
    /// Roles of the inputs, by position; inputs past the end take `variadic`.
    pub inputs: &'static [InputRole],
    /// Role of inputs beyond `inputs` (Concat's, for instance).
    pub variadic: InputRole,
    /// How every output is parameterised.
    pub output: OutputRole,
    /// ONNX Runtime runs this op on int8 data when its inputs and output are quantized, so the
    /// op is worth quantizing for speed, not just size.
    pub int8_kernel: bool,
}

use Axis::*;
use InputRole::*;
use OutputRole::*;

const fn rule(op: &'static str, inputs: &'static [InputRole], output: OutputRole) -> OpRule {
    OpRule {
        op,
        inputs,
        variadic: Skip,
        output,
        int8_kernel: false,
    }
}

const fn kernel(mut r: OpRule) -> OpRule {
    r.int8_kernel = true;
    r
}

/// The rule table, sorted by op name. Every op not listed stays float.
pub static RULES: &[OpRule] = &[
    kernel(rule("Add", &[Act, Act], Own)),
    kernel(rule("AveragePool", &[Act], Own)),
    rule("Clip", &[Act, Skip, Skip], SameAsInput(0)),
    kernel(OpRule {
        variadic: Act,
        ..rule("Concat", &[], Own)
    }),
    kernel(rule("Conv", &[Act, Weight(Fixed(0)), Bias], Own)),
    // No int8 ConvTranspose kernel in ONNX Runtime's CPU provider (1.31): it runs DQ ->
    // float ConvTranspose -> Q, quantized for size and for its neighbours' sake.
    rule("ConvTranspose", &[Act, Weight(Fixed(1)), Bias], Own),
    rule("DepthToSpace", &[Act], SameAsInput(0)),
    rule("Expand", &[Act, Skip], SameAsInput(0)),
    rule("Flatten", &[Act], SameAsInput(0)),
    rule("Gather", &[Act, Skip], SameAsInput(0)),
    kernel(rule("Gemm", &[Act, Weight(GemmB), Bias], Own)),
    kernel(rule("GlobalAveragePool", &[Act], Own)),
    rule("HardSigmoid", &[Act], Own),
    rule("HardSwish", &[Act], Own),
    rule("Identity", &[Act], SameAsInput(0)),
    rule("LayerNormalization", &[Act, Skip, Skip], Own),
    kernel(rule("LeakyRelu", &[Act], Own)),
    kernel(rule("MatMul", &[Act, Weight(Last)], Own)),
    rule("MaxPool", &[Act], SameAsInput(0)),
    kernel(rule("Mul", &[Act, Act], Own)),
    rule("Pad", &[Act, Skip, Skip, Skip], SameAsInput(0)),
    rule("Relu", &[Act], Own),
    rule("Reshape", &[Act, Skip], SameAsInput(0)),
    rule("Resize", &[Act, Skip, Skip, Skip], SameAsInput(0)),
    kernel(rule("Sigmoid", &[Act], FixedRange(0.0, 1.0))),
    rule("Slice", &[Act, Skip, Skip, Skip, Skip], SameAsInput(0)),
    kernel(rule("Softmax", &[Act], FixedRange(0.0, 1.0))),
    rule("SpaceToDepth", &[Act], SameAsInput(0)),
    rule("Split", &[Act, Skip], SameAsInput(0)),
    rule("Squeeze", &[Act, Skip], SameAsInput(0)),
    rule("Tile", &[Act, Skip, Skip], SameAsInput(0)),
    rule("Transpose", &[Act], SameAsInput(0)),
    rule("Unsqueeze", &[Act, Skip], SameAsInput(0)),
    rule("Where", &[Skip, Act, Act], Own),
];

/// The rule for `op` in the default domain, if it has one.
pub fn rule_for(op: &str) -> Option<&'static OpRule> {
    RULES
        .binary_search_by(|r| r.op.cmp(op))
        .ok()
        .map(|i| &RULES[i])
}

impl OpRule {
    /// The role of input `i`.
    pub fn input(&self, i: usize) -> InputRole {
        self.inputs.get(i).copied().unwrap_or(self.variadic)
    }
}

/// What dynamic mode does with an op: weights become int8 offline, activations are quantized
/// at run time from their actual range (`DynamicQuantizeLinear`), so no calibration is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynamicRole {
    /// `A × B` with B a constant: `MatMulInteger` on the run-time-quantized A, then the
    /// scale product (ONNX Runtime fuses this into `MatMulIntegerToFloat` or
    /// `DynamicQuantizeMatMul`).
    MatMul,
    /// Gemm with a constant B (transA 0): the same as MatMul, with B stored as `[K, N]`,
    /// `alpha` folded into the weight scales and `beta · C` added after.
    Gemm,
    /// Gather on a constant table (embeddings): the table stored 8-bit, the gathered rows
    /// dequantized.
    Table,
    /// LSTM with constant W and R: ONNX Runtime's `com.microsoft.DynamicQuantizeLSTM`.
    Lstm,
    /// Left float on purpose, with why.
    Float(&'static str),
}

/// Dynamic mode's table, sorted by op name. Every op not listed stays float ("no rule").
pub static DYNAMIC_RULES: &[(&str, DynamicRole)] = &[
    (
        "Conv",
        DynamicRole::Float(
            "dynamic mode: ONNX Runtime's CPU provider has no ConvInteger kernel for uint8 \
             activations with int8 weights",
        ),
    ),
    (
        "GRU",
        DynamicRole::Float("dynamic mode: ONNX Runtime has no dynamically quantized GRU kernel"),
    ),
    ("Gather", DynamicRole::Table),
    ("Gemm", DynamicRole::Gemm),
    ("LSTM", DynamicRole::Lstm),
    ("MatMul", DynamicRole::MatMul),
];

/// Dynamic mode's rule for `op` in the default domain, if it has one.
pub fn dynamic_rule_for(op: &str) -> Option<DynamicRole> {
    DYNAMIC_RULES
        .binary_search_by(|(name, _)| name.cmp(&op))
        .ok()
        .map(|i| DYNAMIC_RULES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_lookup_finds_every_rule() {
        for pair in RULES.windows(2) {
            assert!(
                pair[0].op < pair[1].op,
                "{} before {}",
                pair[0].op,
                pair[1].op
            );
        }
        for r in RULES {
            assert_eq!(rule_for(r.op).map(|f| f.op), Some(r.op));
        }
        for pair in DYNAMIC_RULES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (op, role) in DYNAMIC_RULES {
            assert_eq!(dynamic_rule_for(op), Some(*role));
        }
        assert!(rule_for("Erf").is_none());
    }

    #[test]
    fn concat_inputs_are_all_activations() {
        let concat = rule_for("Concat").unwrap();
        assert_eq!(concat.input(0), Act);
        assert_eq!(concat.input(7), Act);
        assert_eq!(rule_for("Reshape").unwrap().input(1), Skip);
    }
}
