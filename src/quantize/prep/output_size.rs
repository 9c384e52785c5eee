//! The size of outputs whose shape comes from input *values* (`ConstantOfShape`, `Expand`,
//! `Tile`), computed from the ONNX spec before anything is evaluated: folding must neither
//! allocate a huge tensor nor trust an evaluator that wrapped an absurd shape around.

use super::values::ints;
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{NodeProto, TensorProto};

/// Element count and element type of the output of `node` on the constant `inputs` (by name),
/// for the ops whose output shape its input values decide; `None` for other ops. `Err` when
/// the values do not describe a valid shape.
pub(crate) fn value_shaped_output(
    node: &NodeProto,
    inputs: &[TensorProto],
) -> Option<Result<(u64, DataType), String>> {
    let input = |k: usize| {
        let name = node.input.get(k).filter(|n| !n.is_empty())?;
        inputs.iter().find(|t| t.name() == name.as_str())
    };
    let elem_type = |t: &TensorProto| {
        DataType::try_from(t.data_type()).map_err(|_| "unknown element type".to_string())
    };
    let result = match node.op_type() {
        "ConstantOfShape" => (|| {
            let shape = ints(input(0).ok_or("no shape input")?)?;
            let dt = match attr::tensor(node, "value")? {
                Some(t) => elem_type(t)?,
                None => DataType::Float,
            };
            Ok((count(&shape)?, dt))
        })(),
        "Expand" => (|| {
            let data = input(0).ok_or("no data input")?;
            let shape = ints(input(1).ok_or("no shape input")?)?;
            Ok((count(&broadcast(&data.dims, &shape)?)?, elem_type(data)?))
        })(),
        "Tile" => (|| {
            let data = input(0).ok_or("no data input")?;
            let repeats = ints(input(1).ok_or("no repeats input")?)?;
            if repeats.len() != data.dims.len() {
                return Err("repeats and data ranks differ".into());
            }
            let dims: Option<Vec<i64>> = data
                .dims
                .iter()
                .zip(&repeats)
                .map(|(d, r)| d.checked_mul(*r))
                .collect();
            Ok((count(&dims.ok_or("overflow")?)?, elem_type(data)?))
        })(),
        _ => return None,
    };
    Some(result)
}

fn count(dims: &[i64]) -> Result<u64, String> {
    crate::onnx::tensor::element_count(dims)
}

/// Numpy-style broadcast of two shapes.
fn broadcast(a: &[i64], b: &[i64]) -> Result<Vec<i64>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[i64], k: usize| {
        if k + s.len() < rank {
            1
        } else {
            s[k + s.len() - rank]
        }
    };
    (0..rank)
        .map(|k| match (at(a, k), at(b, k)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(format!(
                "shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(broadcast(&[3, 1], &[2, 1, 4]).unwrap(), [2, 3, 4]);
        assert!(broadcast(&[3], &[4]).is_err());
    }
}
