//! Checks one loaded value against the model input it feeds: element type, rank, static dims and
//! finite values. Every message names the file (the error's path), the input and both shapes.

use std::path::Path;

use tract_onnx::prelude::{f16, DatumType, Tensor};

use super::{data_error, InputSpec};
use crate::engine;
use crate::error::Result;
use crate::graph::Dim;
use crate::onnx::pb::tensor_proto::DataType;

/// Checks type, shape and values of `value`, read from `path`, for the input `spec`.
pub(super) fn value(path: &Path, spec: &InputSpec, value: &Tensor) -> Result<()> {
    type_and_shape(path, spec, value.datum_type(), value.shape())?;
    finite(path, spec, value)
}

/// Checks that data of type `dt` and shape `shape` can feed `spec`.
pub(super) fn type_and_shape(
    path: &Path,
    spec: &InputSpec,
    dt: DatumType,
    shape: &[usize],
) -> Result<()> {
    let fail = |message: String| Err(data_error(path, Some(&spec.name), message));
    if engine::datum_type(spec.elem_type) != Some(dt) {
        return fail(format!(
            "data has dtype {} but the model input expects {} (no conversion is done: save the \
             data as {})",
            datum_name(dt),
            dtype_name(spec.elem_type),
            dtype_name(spec.elem_type)
        ));
    }
    if shape.len() != spec.shape.len() {
        return fail(format!(
            "data of shape {} has rank {} but the model input {} has rank {}",
            shape_string(shape),
            shape.len(),
            spec.shape_string(),
            spec.shape.len()
        ));
    }
    // An empty batch runs, observes nothing and would still count as a sample. Other axes
    // may be legitimately empty (a decoder's past of length 0).
    if shape.first() == Some(&0) && spec.shape.first() != Some(&Dim::Value(0)) {
        return fail(format!(
            "data of shape {} has a batch dimension of 0: the sample holds no data",
            shape_string(shape)
        ));
    }
    for (axis, (&got, want)) in shape.iter().zip(&spec.shape).enumerate() {
        if let Dim::Value(want) = *want {
            // A negative dim_value is what some exporters write for "any size".
            if want >= 0 && got as u64 != want as u64 {
                return fail(format!(
                    "data of shape {} does not match the model input's {} (axis {axis} is {got}, \
                     expected {want})",
                    shape_string(shape),
                    spec.shape_string()
                ));
            }
        }
    }
    Ok(())
}

/// Refuses NaN and infinities in float data, naming the first bad element.
fn finite(path: &Path, spec: &InputSpec, value: &Tensor) -> Result<()> {
    let Some((flat, bad)) = first_non_finite(value) else {
        return Ok(());
    };
    let what = if bad.is_nan() {
        "NaN"
    } else if bad > 0.0 {
        "+inf"
    } else {
        "-inf"
    };
    Err(data_error(
        path,
        Some(&spec.name),
        format!(
            "data contains {what} at element {flat} (index {})",
            shape_string(&unravel(flat, value.shape()))
        ),
    ))
}

/// Flat position and value of the first non-finite element of a float tensor.
fn first_non_finite(value: &Tensor) -> Option<(usize, f64)> {
    fn scan<T: tract_onnx::prelude::Datum + Copy + Into<f64>>(
        value: &Tensor,
    ) -> Option<(usize, f64)> {
        let view = value.to_plain_array_view::<T>().ok()?;
        view.iter()
            .map(|&x| x.into())
            .enumerate()
            .find(|(_, x): &(usize, f64)| !x.is_finite())
    }
    match value.datum_type() {
        DatumType::F32 => scan::<f32>(value),
        DatumType::F64 => scan::<f64>(value),
        DatumType::F16 => scan::<f16>(value),
        _ => None,
    }
}

/// The multi-index of flat position `flat` in a C-ordered array of `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[i] = flat % d;
            flat /= d;
        }
    }
    index
}

pub(super) use crate::numpy::{dtype_name, shape_string};

/// The NumPy spelling of a tract element type.
fn datum_name(dt: DatumType) -> String {
    use DataType::*;
    [
        Float, Double, Float16, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Bool,
    ]
    .into_iter()
    .find(|&d| engine::datum_type(d) == Some(dt))
    .map_or_else(|| format!("{dt:?}"), |d| dtype_name(d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(elem_type: DataType, shape: Vec<Dim>) -> InputSpec {
        InputSpec {
            name: "x".into(),
            elem_type,
            shape,
        }
    }

    #[test]
    fn messages_name_the_input_and_both_shapes() {
        let s = spec(
            DataType::Float,
            vec![Dim::Param("N".into()), Dim::Value(3), Dim::Unknown],
        );
        let path = Path::new("a.npy");
        let cases: &[(DatumType, &[usize], &str)] = &[
            (
                DatumType::F64,
                &[1, 3, 5],
                "dtype float64 but the model input expects float32",
            ),
            (
                DatumType::F32,
                &[1, 3],
                "shape [1,3] has rank 2 but the model input [N,3,?] has rank 3",
            ),
            (
                DatumType::F32,
                &[7, 4, 5],
                "[7,4,5] does not match the model input's [N,3,?] (axis 1 is 4, expected 3)",
            ),
        ];
        for (dt, shape, expected) in cases {
            let err = type_and_shape(path, &s, *dt, shape)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("a.npy: input 'x': "), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        type_and_shape(path, &s, DatumType::F32, &[9, 3, 100]).unwrap();
    }

    #[test]
    fn first_bad_element_is_located() {
        let s = spec(DataType::Float, vec![Dim::Value(2), Dim::Value(3)]);
        let t =
            Tensor::from_shape(&[2, 3], &[0f32, 1.0, 2.0, 3.0, f32::NAN, f32::INFINITY]).unwrap();
        let err = value(Path::new("a.npz"), &s, &t).unwrap_err().to_string();
        assert!(err.contains("NaN at element 4 (index [1,1])"), "{err}");
        let t =
            Tensor::from_shape(&[2, 3], &[0f32, 1.0, 2.0, f32::NEG_INFINITY, 0.0, 0.0]).unwrap();
        let err = value(Path::new("a.npz"), &s, &t).unwrap_err().to_string();
        assert!(err.contains("-inf at element 3 (index [1,0])"), "{err}");
        let t = Tensor::from_shape(&[1], &[f16::from_f32(f32::INFINITY)]).unwrap();
        let s16 = spec(DataType::Float16, vec![Dim::Value(1)]);
        assert!(value(Path::new("a"), &s16, &t).is_err());
    }
}
