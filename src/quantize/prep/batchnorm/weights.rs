//! The arithmetic of a fold: which output channel each weight element belongs to, and Gemm's
//! new bias.

use crate::onnx::pb::TensorProto;

/// Where the folded node keeps its output channels.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// `W` is `[M, C/group, k…]`: axis 0.
    Conv,
    /// `W` is `[C, M/group, k…]`: axis 1 within each group.
    ConvTranspose { group: usize },
    /// `W` is `[K, N]`, or `[N, K]` with `transB`.
    Gemm { trans_b: bool },
}

/// For each flat index of the weight, its output channel; `None` when the weight's shape does
/// not match `c` channels.
pub(super) fn channel_map(
    kind: Kind,
    dims: &[i64],
    c: usize,
) -> Option<Box<dyn Fn(usize) -> usize>> {
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    match kind {
        Kind::Conv => {
            if dims.len() < 2 || dims[0] != c {
                return None;
            }
            let per = dims[1..].iter().product::<usize>().max(1);
            Some(Box::new(move |i| i / per))
        }
        Kind::ConvTranspose { group } => {
            if dims.len() < 2 || !dims[0].is_multiple_of(group) || dims[1] * group != c {
                return None;
            }
            let (per_group_in, per_group_out) = (dims[0] / group, dims[1]);
            let per = dims[2..].iter().product::<usize>().max(1);
            Some(Box::new(move |i| {
                let input_channel = i / (per_group_out * per);
                let j = (i / per) % per_group_out;
                (input_channel / per_group_in.max(1)) * per_group_out + j
            }))
        }
        Kind::Gemm { trans_b } => {
            if dims.len() != 2 {
                return None;
            }
            let (rows, cols) = (dims[0], dims[1]);
            if (if trans_b { rows } else { cols }) != c {
                return None;
            }
            Some(if trans_b {
                Box::new(move |i| i / cols)
            } else {
                Box::new(move |i| i % cols)
            })
        }
    }
}

/// Gemm's new `C` (to be used with `beta = 1`): `s·(beta·C + a) + shift`, shaped `[N]` or
/// `[M, N]` when the old `C` had rows.
pub(super) fn gemm_bias(
    old: Option<&(TensorProto, Vec<f64>)>,
    beta: f64,
    added: &[f64],
    scale: &[f64],
    shift: &[f64],
) -> Option<(Vec<i64>, Vec<f64>)> {
    let n = scale.len();
    let (rows, cols, values): (usize, usize, &[f64]) = match old {
        None => (1, 1, &[0.0]),
        Some((t, v)) => {
            let dims: Vec<usize> = t
                .dims
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<_>>()?;
            match dims.as_slice() {
                [] => (1, 1, v),
                [cols] => (1, *cols, v),
                [rows, cols] => (*rows, *cols, v),
                _ => return None,
            }
        }
    };
    if (cols != 1 && cols != n) || rows == 0 || values.len() != rows * cols {
        return None;
    }
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for j in 0..n {
            let old = values[r * cols + if cols == 1 { 0 } else { j }];
            out.push(scale[j] * (beta * old + added[j]) + shift[j]);
        }
    }
    let dims = if rows == 1 {
        vec![n as i64]
    } else {
        vec![rows as i64, n as i64]
    };
    Some((dims, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(kind: Kind, dims: &[i64], c: usize) -> Vec<usize> {
        let map = channel_map(kind, dims, c).unwrap();
        let n = dims.iter().product::<i64>() as usize;
        (0..n).map(map).collect()
    }

    #[test]
    fn conv_transpose_groups_interleave_output_channels() {
        // W is [C_in = 4, M/group = 1, 1]: with 2 groups, input channels 0-1 feed output
        // channel 0 and input channels 2-3 output channel 1.
        assert_eq!(
            channels(Kind::ConvTranspose { group: 2 }, &[4, 1, 1], 2),
            [0, 0, 1, 1]
        );
        assert_eq!(
            channels(Kind::ConvTranspose { group: 1 }, &[2, 3, 1], 3),
            [0, 1, 2, 0, 1, 2]
        );
        assert!(channel_map(Kind::ConvTranspose { group: 3 }, &[4, 1, 1], 3).is_none());
    }

    #[test]
    fn gemm_channels_follow_trans_b() {
        assert_eq!(
            channels(Kind::Gemm { trans_b: false }, &[2, 3], 3),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(
            channels(Kind::Gemm { trans_b: true }, &[3, 2], 3),
            [0, 0, 1, 1, 2, 2]
        );
        assert_eq!(channels(Kind::Conv, &[2, 1, 2, 1], 2), [0, 0, 1, 1]);
    }

    #[test]
    fn gemm_bias_broadcasts_a_scalar_c() {
        let c = TensorProto {
            dims: vec![],
            ..Default::default()
        };
        let (dims, values) = gemm_bias(
            Some(&(c, vec![2.0])),
            0.5,
            &[0.0, 1.0],
            &[1.0, 2.0],
            &[0.0, 10.0],
        )
        .unwrap();
        assert_eq!(dims, [2]);
        assert_eq!(values, [1.0, 14.0]);
    }
}
