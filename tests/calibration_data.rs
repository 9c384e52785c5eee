//! Calibration data sources: every kind is detected and loaded with the right values, and every
//! kind of bad data is refused with a message naming the file and the input. All fixtures are
//! generated into temporary folders.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use ndarray::{arr1, arr2, arr3, Array, ArrayD, IxDyn};
use ndarray_npy::{write_npy, NpzWriter};
use onnx_ptq::calibrate::data::{
    ChannelOrder, DataSource, ImagePreprocess, InputSpec, Layout, ResizeMode, Sample, SourceKind,
};
use onnx_ptq::onnx::pb::tensor_proto::DataType;
use onnx_ptq::onnx::pb::tensor_shape_proto::{dimension, Dimension};
use onnx_ptq::onnx::pb::type_proto::{self, Sequence};
use onnx_ptq::onnx::pb::{
    GraphProto, ModelProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;
use tempfile::TempDir;
use tract_onnx::prelude::{IntoTensor, Tensor};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A graph input; `dims` like `"N,3,8,8"`: numbers are static, `?` unknown, names symbolic.
fn input(name: &str, dt: DataType, dims: &str) -> ValueInfoProto {
    let dim = dims
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| Dimension {
            value: match d {
                "?" => None,
                _ => Some(match d.parse() {
                    Ok(v) => dimension::Value::DimValue(v),
                    Err(_) => dimension::Value::DimParam(d.into()),
                }),
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dt as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(inputs: Vec<ValueInfoProto>, initializers: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        graph: Some(GraphProto {
            input: inputs,
            initializer: initializers,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Input specs of a model with these `(name, type, dims)` inputs.
fn specs(inputs: &[(&str, DataType, &str)]) -> Vec<InputSpec> {
    let inputs = inputs.iter().map(|(n, dt, d)| input(n, *dt, d)).collect();
    InputSpec::of_model(&model(inputs, vec![])).unwrap()
}

fn f32_input(dims: &str) -> Vec<InputSpec> {
    specs(&[("x", DataType::Float, dims)])
}

/// A temporary folder with helpers that create parent folders as needed.
struct Dir(TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, rel: &str) -> PathBuf {
        let path = self.0.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    fn root(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }

    fn npz(&self, rel: &str, add: impl FnOnce(&mut NpzWriter<File>)) -> PathBuf {
        let path = self.path(rel);
        let mut npz = NpzWriter::new(File::create(&path).unwrap());
        add(&mut npz);
        npz.finish().unwrap();
        path
    }

    fn npy<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(
        &self,
        rel: &str,
        a: &Array<A, D>,
    ) -> PathBuf {
        let path = self.path(rel);
        write_npy(&path, a).unwrap();
        path
    }

    fn pb(&self, rel: &str, t: &TensorProto) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, t.encode_to_vec()).unwrap();
        path
    }

    fn bytes(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn png(&self, rel: &str, img: &RgbImage) -> PathBuf {
        let path = self.path(rel);
        img.save_with_format(&path, ImageFormat::Png).unwrap();
        path
    }
}

fn f32_proto(name: &str, dims: &[i64], values: &[f32], raw: bool) -> TensorProto {
    let mut t = TensorProto {
        name: (!name.is_empty()).then(|| name.to_string()),
        data_type: Some(DataType::Float as i32),
        dims: dims.to_vec(),
        ..Default::default()
    };
    if raw {
        t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        t.float_data = values.to_vec();
    }
    t
}

fn i64_proto(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(DataType::Int64 as i32),
        dims: dims.to_vec(),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn open(path: &Path, inputs: &[InputSpec]) -> DataSource {
    DataSource::open(path, None, inputs, None, None).unwrap()
}

fn load_all(source: &DataSource) -> Vec<Sample> {
    source.check_all().unwrap();
    (0..source.len()).map(|i| source.load(i).unwrap()).collect()
}

fn tensor<D: ndarray::Dimension, T: tract_onnx::prelude::Datum>(a: Array<T, D>) -> Tensor {
    a.into_tensor()
}

fn file_name(label: &str) -> &str {
    Path::new(label).file_name().unwrap().to_str().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `npz_pair.py`: `samples` samples for `model` saved with `np.savez` (`out/plain`) and with
/// `np.savez_compressed` (`out/compressed`), float inputs cast to `dtype` when given. Checks that
/// the compressed members really are deflated (zip method 8).
fn npz_pair(model: &Path, out: &Path, samples: usize, dtype: Option<&str>) {
    let n = samples.to_string();
    let mut args = vec![
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        "--samples",
        &n,
    ];
    if let Some(dtype) = dtype {
        args.extend(["--dtype", dtype]);
    }
    let line = common::python_ok("npz_pair.py", &args);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["methods"], serde_json::json!([8]), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Model inputs

#[test]
fn input_specs_skip_initializers_and_need_tensor_shapes() {
    let weight = TensorProto {
        name: Some("w".into()),
        ..Default::default()
    };
    let m = model(
        vec![
            input("x", DataType::Float, "N,3"),
            input("w", DataType::Float, "3"),
        ],
        vec![weight],
    );
    let found = InputSpec::of_model(&m).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "x");
    assert_eq!(found[0].shape_string(), "[N,3]");

    let mut no_shape = input("x", DataType::Float, "");
    if let Some(type_proto::Value::TensorType(t)) =
        no_shape.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let sequence = ValueInfoProto {
        name: Some("s".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::SequenceType(Box::new(Sequence {
                elem_type: None,
            }))),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (bad, expected) in [
        (no_shape, "input 'x' has no shape"),
        (sequence, "input 's' is not a tensor"),
    ] {
        let err = InputSpec::of_model(&model(vec![bad], vec![])).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(InputSpec::of_model(&ModelProto::default()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Kinds that load

#[test]
fn npz_folder_feeds_every_input_in_model_order() {
    let dir = Dir::new();
    let inputs = specs(&[("x", DataType::Float, "N,3"), ("ids", DataType::Int64, "N")]);
    for i in [2i64, 0, 1] {
        dir.npz(&format!("data/s{i}.npz"), |w| {
            // Written in the opposite order to the model's inputs.
            w.add_array("ids", &arr1(&[i, 10 * i])).unwrap();
            let v = i as f32;
            w.add_array("x", &arr2(&[[v, v + 0.5, -v], [1.0, 2.0, 3.0]]))
                .unwrap();
        });
    }
    let source = open(&dir.path("data"), &inputs);
    assert_eq!(source.kind(), SourceKind::Npz);
    assert_eq!(source.len(), 3);
    for (i, sample) in load_all(&source).into_iter().enumerate() {
        assert_eq!(file_name(&sample.label), format!("s{i}.npz"));
        let v = i as f32;
        let x = tensor(arr2(&[[v, v + 0.5, -v], [1.0, 2.0, 3.0]]));
        let ids = tensor(arr1(&[i as i64, 10 * i as i64]));
        assert_eq!(sample.inputs, vec![x, ids]);
    }
    // One .npz file is one sample.
    let single = open(&dir.path("data/s1.npz"), &inputs);
    assert_eq!((single.kind(), single.len()), (SourceKind::Npz, 1));
}

/// `onnx-ptq calibrate MODEL --calib DATA -o OUT -q EXTRA…`: the ranges JSON, without the
/// run time.
fn calibrate_json(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let r = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .arg("calibrate")
        .arg(model)
        .arg("--calib")
        .arg(data)
        .arg("-o")
        .arg(out)
        .arg("-q")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "calibrate on {} failed:\n{}",
        data.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(out).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn compressed_npz_calibrates_exactly_like_uncompressed() {
    let dir = Dir::new();
    let model = fixture("cnn.onnx");
    npz_pair(&model, &dir.root(), 4, None);
    for extra in [&[][..], &["--method", "percentile"]] {
        let plain = calibrate_json(&model, &dir.path("plain"), &dir.path("p.json"), extra);
        let compressed =
            calibrate_json(&model, &dir.path("compressed"), &dir.path("c.json"), extra);
        assert_eq!(plain["samples"], 4);
        assert!(plain["tensors"].as_object().unwrap().len() > 3, "{plain}");
        assert_eq!(plain, compressed, "{extra:?}");
    }
}

#[test]
fn compressed_float16_npz_loads_like_uncompressed() {
    let dir = Dir::new();
    npz_pair(&fixture("cnn.onnx"), &dir.root(), 2, Some("float16"));
    let inputs = specs(&[("x", DataType::Float16, "N,3,32,32")]);
    let plain = load_all(&open(&dir.path("plain"), &inputs));
    let compressed = load_all(&open(&dir.path("compressed"), &inputs));
    assert_eq!(plain.len(), 2);
    for (p, c) in plain.iter().zip(&compressed) {
        assert_eq!(file_name(&p.label), file_name(&c.label));
        assert_eq!(
            p.inputs[0].datum_type(),
            tract_onnx::prelude::DatumType::F16
        );
        assert_eq!(p.inputs[0].shape(), &[2, 3, 32, 32]);
        assert_eq!(p.inputs, c.inputs);
    }
}

#[test]
fn npy_folder_holds_one_sample_per_file() {
    let dir = Dir::new();
    let inputs = specs(&[("x", DataType::Uint8, "1,2,2")]);
    for i in 0..3u8 {
        dir.npy(&format!("d/{i}.npy"), &arr3(&[[[i, 1], [2, 255]]]));
    }
    let source = open(&dir.path("d"), &inputs);
    assert_eq!((source.kind(), source.len()), (SourceKind::Npy, 3));
    for (i, sample) in load_all(&source).into_iter().enumerate() {
        assert_eq!(
            sample.inputs,
            vec![tensor(arr3(&[[[i as u8, 1], [2, 255]]]))]
        );
    }
}

#[test]
fn stacked_npy_rows_are_samples() {
    let dir = Dir::new();
    let data: ArrayD<f32> = ArrayD::from_shape_fn(IxDyn(&[4, 2]), |i| (i[0] * 10 + i[1]) as f32);
    let path = dir.npy("stack.npy", &data);
    // The input keeps the array's rank: each row keeps a batch axis of 1. One less: rows lose
    // the sample axis.
    let cases: &[(&str, &[usize])] = &[("N,2", &[1, 2]), ("2", &[2])];
    for (dims, row_shape) in cases {
        let source = open(&path, &f32_input(dims));
        assert_eq!((source.kind(), source.len()), (SourceKind::NpyStack, 4));
        for (i, sample) in load_all(&source).into_iter().enumerate() {
            assert_eq!(sample.label, format!("{}[{i}]", path.display()));
            let row = [i as f32 * 10.0, i as f32 * 10.0 + 1.0];
            assert_eq!(
                sample.inputs,
                vec![Tensor::from_shape(row_shape, &row).unwrap()]
            );
        }
    }
    let limited = DataSource::open(&path, None, &f32_input("N,2"), None, Some(2)).unwrap();
    assert_eq!(limited.len(), 2);
    assert!(limited.load(2).is_err());
}

#[test]
fn onnx_test_data_matches_by_name_else_by_order() {
    let dir = Dir::new();
    let inputs = specs(&[("a", DataType::Float, "2"), ("b", DataType::Int64, "1")]);
    for set in [0i64, 1, 2, 10] {
        let v = set as f32;
        // Named tensors in the "wrong" file order: matched by name.
        dir.pb(
            &format!("named/test_data_set_{set}/input_0.pb"),
            &i64_proto("b", &[1], &[set]),
        );
        dir.pb(
            &format!("named/test_data_set_{set}/input_1.pb"),
            &f32_proto("a", &[2], &[v, -v], set % 2 == 0),
        );
        // Unnamed tensors: matched by order.
        dir.pb(
            &format!("unnamed/test_data_set_{set}/input_0.pb"),
            &f32_proto("", &[2], &[v, -v], true),
        );
        dir.pb(
            &format!("unnamed/test_data_set_{set}/input_1.pb"),
            &TensorProto {
                name: None,
                ..i64_proto("", &[1], &[set])
            },
        );
        dir.bytes(
            &format!("unnamed/test_data_set_{set}/output_0.pb"),
            b"ignored",
        );
    }
    for folder in ["named", "unnamed"] {
        let source = open(&dir.path(folder), &inputs);
        assert_eq!((source.kind(), source.len()), (SourceKind::TestData, 4));
        let samples = load_all(&source);
        for (sample, set) in samples.iter().zip([0i64, 1, 2, 10]) {
            assert_eq!(file_name(&sample.label), format!("test_data_set_{set}"));
            let v = set as f32;
            let expected = vec![tensor(arr1(&[v, -v])), tensor(arr1(&[set]))];
            assert_eq!(sample.inputs, expected, "{folder} {set}");
        }
    }
    // The path may also be one test_data_set folder.
    let one = open(&dir.path("named/test_data_set_10"), &inputs);
    assert_eq!(one.len(), 1);
    assert_eq!(one.load(0).unwrap().inputs[1], tensor(arr1(&[10i64])));
}

#[test]
fn samples_are_sorted_by_name_and_limited() {
    let dir = Dir::new();
    let names = ["c", "a", "e", "b", "d"];
    for (i, name) in names.iter().enumerate() {
        dir.npy(&format!("d/{name}.npy"), &arr1(&[i as f32]));
    }
    let inputs = f32_input("1");
    let labels = |limit| {
        let source = DataSource::open(&dir.path("d"), None, &inputs, None, limit).unwrap();
        let samples = load_all(&source);
        samples
            .iter()
            .map(|s| file_name(&s.label).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(None), ["a.npy", "b.npy", "c.npy", "d.npy", "e.npy"]);
    assert_eq!(labels(Some(2)), ["a.npy", "b.npy"]);
    assert_eq!(labels(Some(50)).len(), 5);
    // Opening twice gives the same order.
    assert_eq!(labels(Some(3)), labels(Some(3)));
}

#[test]
fn symbolic_dims_accept_any_size() {
    let dir = Dir::new();
    dir.npy("d/a.npy", &Array::<f32, _>::zeros(IxDyn(&[1, 5, 4])));
    dir.npy("d/b.npy", &Array::<f32, _>::zeros(IxDyn(&[3, 7, 4])));
    let source = open(&dir.path("d"), &f32_input("N,?,4"));
    let shapes: Vec<Vec<usize>> = load_all(&source)
        .iter()
        .map(|s| s.inputs[0].shape().to_vec())
        .collect();
    assert_eq!(shapes, [vec![1, 5, 4], vec![3, 7, 4]]);
}

#[test]
fn explicit_kind_overrides_detection() {
    let dir = Dir::new();
    // A single .npy is a stack unless told it is one sample.
    let path = dir.npy("one.npy", &arr2(&[[1f32, 2.0]]));
    let inputs = f32_input("1,2");
    let source = DataSource::open(&path, Some(SourceKind::Npy), &inputs, None, None).unwrap();
    assert_eq!((source.kind(), source.len()), (SourceKind::Npy, 1));
    assert_eq!(
        source.load(0).unwrap().inputs[0],
        tensor(arr2(&[[1f32, 2.0]]))
    );
    // A folder with .npy files and images: the kind picks the files.
    dir.png("one.png", &RgbImage::new(2, 1));
    let source = DataSource::open(&dir.root(), Some(SourceKind::Npy), &inputs, None, None).unwrap();
    assert_eq!(source.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Images

/// A 2x2 image: (x, y) -> pixel.
fn image_2x2() -> RgbImage {
    let pixels = [[10, 20, 30], [50, 60, 70], [100, 120, 130], [200, 220, 255]];
    RgbImage::from_fn(2, 2, |x, y| Rgb(pixels[(y * 2 + x) as usize]))
}

/// Preprocessing that keeps raw pixel values.
fn raw_pixels() -> ImagePreprocess {
    ImagePreprocess {
        scale: 1.0,
        ..ImagePreprocess::default()
    }
}

fn load_image(img: &RgbImage, dims: &str, pre: &ImagePreprocess) -> Tensor {
    let dir = Dir::new();
    let path = dir.png("img.png", img);
    let inputs = f32_input(dims);
    let source = DataSource::open(&path, None, &inputs, Some(pre), None).unwrap();
    assert_eq!(source.kind(), SourceKind::Images);
    source.load(0).unwrap().inputs.remove(0)
}

#[test]
fn image_values_by_hand() {
    let normalized = ImagePreprocess {
        mean: [10.0, 20.0, 30.0],
        std: [2.0, 4.0, 5.0],
        ..raw_pixels()
    };
    let bgr = ImagePreprocess {
        channel_order: ChannelOrder::Bgr,
        ..raw_pixels()
    };
    let nhwc = ImagePreprocess {
        layout: Layout::Nhwc,
        ..raw_pixels()
    };
    // Every case has a shape of 12 values; the 2x2 image pixels are listed in `image_2x2`.
    let cases = [
        (
            // (value - mean) / std per channel: R (0,20,45,95), G (0,10,25,50), B (0,8,20,45).
            "stretch + mean/std",
            &normalized,
            "1,3,2,2",
            [0f32, 20., 45., 95., 0., 10., 25., 50., 0., 8., 20., 45.],
        ),
        (
            "bgr",
            &bgr,
            "1,3,2,2",
            [
                30., 70., 130., 255., 20., 60., 120., 220., 10., 50., 100., 200.,
            ],
        ),
        (
            "nhwc",
            &nhwc,
            "1,2,2,3",
            [
                10., 20., 30., 50., 60., 70., 100., 120., 130., 200., 220., 255.,
            ],
        ),
    ];
    for (what, pre, dims, values) in cases {
        let shape: Vec<usize> = dims.split(',').map(|d| d.parse().unwrap()).collect();
        let got = load_image(&image_2x2(), dims, pre);
        assert_eq!(got, Tensor::from_shape(&shape, &values).unwrap(), "{what}");
    }
    // The default scale is 1/255.
    let got = load_image(&image_2x2(), "N,3,2,2", &ImagePreprocess::default());
    let first = got.to_plain_array_view::<f32>().unwrap()[[0, 0, 1, 1]];
    assert_eq!(first, 200.0 * (1.0f32 / 255.0));
}

/// The red channel of an NCHW image tensor as rows.
fn red_rows(t: &Tensor) -> Vec<Vec<f32>> {
    let view = t.to_plain_array_view::<f32>().unwrap();
    let (h, w) = (t.shape()[2], t.shape()[3]);
    (0..h)
        .map(|y| (0..w).map(|x| view[[0, 0, y, x]]).collect())
        .collect()
}

#[test]
fn letterbox_pads_around_the_centered_image() {
    let pre = ImagePreprocess {
        resize: ResizeMode::Letterbox,
        pad_value: 114,
        ..raw_pixels()
    };
    let p = 114.0;
    // Pixel value = 10 * x + y + 1, so that no pixel equals the padding.
    let img = |w, h| RgbImage::from_fn(w, h, |x, y| Rgb([(10 * x + y + 1) as u8, 0, 0]));
    let cases: &[(u32, u32, &[&[f32]])] = &[
        // Wide image: padding above and below.
        (
            4,
            2,
            &[
                &[p, p, p, p],
                &[1., 11., 21., 31.],
                &[2., 12., 22., 32.],
                &[p, p, p, p],
            ],
        ),
        // Tall image: padding left and right.
        (
            2,
            4,
            &[
                &[p, 1., 11., p],
                &[p, 2., 12., p],
                &[p, 3., 13., p],
                &[p, 4., 14., p],
            ],
        ),
        // Odd margin: the smaller one on top.
        (
            4,
            1,
            &[
                &[p, p, p, p],
                &[1., 11., 21., 31.],
                &[p, p, p, p],
                &[p, p, p, p],
            ],
        ),
    ];
    for (w, h, expected) in cases {
        let got = red_rows(&load_image(&img(*w, *h), "1,3,4,4", &pre));
        assert_eq!(got, *expected, "{w}x{h}");
    }
    // The yolo preset pads with 114 and scales by 1/255.
    let yolo = ImagePreprocess::preset("yolo").unwrap();
    let got = red_rows(&load_image(&img(4, 2), "1,3,4,4", &yolo));
    assert_eq!(got[0][0], 114.0 * (1.0f32 / 255.0));
    assert_eq!(got[1][1], 11.0 * (1.0f32 / 255.0));
}

#[test]
fn center_crop_keeps_the_middle() {
    let pre = ImagePreprocess {
        resize: ResizeMode::CenterCrop,
        ..raw_pixels()
    };
    // A 7x7 target covers 0.875 of 8 pixels, so an 8x10 or 10x8 image is not resampled, only
    // cropped: (8-7)/2 = 0 columns and (10-7)/2 = 1 row off an 8x10 image.
    let img = |w, h| RgbImage::from_fn(w, h, |x, y| Rgb([(10 * x + y) as u8, 0, 0]));
    for (w, h, left, top) in [(8u32, 10u32, 0usize, 1usize), (10, 8, 1, 0)] {
        let got = red_rows(&load_image(&img(w, h), "1,3,7,7", &pre));
        let expected: Vec<Vec<f32>> = (0..7)
            .map(|y| (0..7).map(|x| (10 * (x + left) + y + top) as f32).collect())
            .collect();
        assert_eq!(got, expected, "{w}x{h}");
    }
}

#[test]
fn image_size_flag_serves_symbolic_inputs() {
    let pre = ImagePreprocess {
        size: Some((3, 2)),
        ..raw_pixels()
    };
    let got = load_image(&image_2x2(), "N,3,H,W", &pre);
    assert_eq!(got.shape(), &[1, 3, 2, 3]);
}

#[test]
fn gray_rgba_jpeg_and_upper_case_extensions_load() {
    let dir = Dir::new();
    GrayImage::from_pixel(2, 2, Luma([77]))
        .save_with_format(dir.path("imgs/a_gray.PNG"), ImageFormat::Png)
        .unwrap();
    RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 0]))
        .save_with_format(dir.path("imgs/b_rgba.png"), ImageFormat::Png)
        .unwrap();
    RgbImage::from_pixel(8, 8, Rgb([200, 100, 50]))
        .save_with_format(dir.path("imgs/c_color.jpeg"), ImageFormat::Jpeg)
        .unwrap();
    let pre = raw_pixels();
    let inputs = f32_input("1,3,2,2");
    let source = DataSource::open(&dir.path("imgs"), None, &inputs, Some(&pre), None).unwrap();
    assert_eq!((source.kind(), source.len()), (SourceKind::Images, 3));
    let samples = load_all(&source);
    let pixel = |s: &Sample| {
        let v = s.inputs[0].to_plain_array_view::<f32>().unwrap().to_owned();
        [v[[0, 0, 0, 0]], v[[0, 1, 0, 0]], v[[0, 2, 0, 0]]]
    };
    assert_eq!(pixel(&samples[0]), [77.0; 3]);
    assert_eq!(pixel(&samples[1]), [1.0, 2.0, 3.0]);
    let jpeg = pixel(&samples[2]);
    for (got, want) in jpeg.iter().zip([200.0, 100.0, 50.0]) {
        assert!((got - want).abs() <= 4.0, "jpeg pixel {jpeg:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad data: every case gives an error naming the file and the input, at open or at check_all.

struct Bad {
    what: &'static str,
    /// Builds the fixture; returns the path to open.
    make: fn(&Dir) -> PathBuf,
    inputs: &'static [(&'static str, DataType, &'static str)],
    kind: Option<SourceKind>,
    /// Substrings the message must contain.
    expected: &'static [&'static str],
}

const X: &[(&str, DataType, &str)] = &[("x", DataType::Float, "N,3")];
const XY: &[(&str, DataType, &str)] = &[("x", DataType::Float, "N,3"), ("y", DataType::Int64, "N")];
const IMG: &[(&str, DataType, &str)] = &[("images", DataType::Float, "1,3,4,4")];

fn first_error(case: &Bad, dir: &Dir) -> String {
    let path = (case.make)(dir);
    let inputs = specs(case.inputs);
    match DataSource::open(&path, case.kind, &inputs, None, None) {
        Err(e) => e.to_string(),
        Ok(source) => match source.check_all() {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{}: no error", case.what),
        },
    }
}

fn bad_cases() -> Vec<Bad> {
    vec![
        Bad {
            what: "npz with float64 data for a float32 input",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f64, 2.0, 3.0]])).unwrap()
                });
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "input 'x'", "float64", "expects float32"],
        },
        Bad {
            what: "npy with int32 data for an int64 input",
            make: |d| {
                d.npy("d/bad.npy", &arr1(&[1i32]))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            inputs: &[("ids", DataType::Int64, "1")],
            kind: None,
            expected: &["bad.npy", "input 'ids'", "int32", "expects int64"],
        },
        Bad {
            what: "wrong rank",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr1(&[1f32, 2.0, 3.0])).unwrap()
                });
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "input 'x'", "[3]", "[N,3]", "rank 1", "rank 2"],
        },
        Bad {
            what: "wrong static dim",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, 2.0, 3.0, 4.0]])).unwrap()
                });
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "input 'x'", "[1,4]", "[N,3]", "axis 1"],
        },
        Bad {
            what: "wrong static dim in the second sample only",
            make: |d| {
                d.npy("d/a.npy", &arr2(&[[1f32, 2.0, 3.0]]));
                d.npy("d/b.npy", &arr2(&[[1f32, 2.0]]));
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["b.npy", "input 'x'", "[1,2]", "[N,3]"],
        },
        Bad {
            what: "missing input",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, 2.0, 3.0]])).unwrap()
                });
                d.path("d")
            },
            inputs: XY,
            kind: None,
            expected: &["bad.npz", "input 'y'", "no array named 'y'", "'x'"],
        },
        Bad {
            what: "extra array",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, 2.0, 3.0]])).unwrap();
                    w.add_array("labels", &arr1(&[1i64])).unwrap();
                });
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "'labels'", "no input for"],
        },
        Bad {
            what: "NaN in an npz",
            make: |d| {
                d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, f32::NAN, 3.0]])).unwrap()
                });
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "input 'x'", "NaN at element 1 (index [0,1])"],
        },
        Bad {
            what: "Inf in an npy",
            make: |d| {
                d.npy("d/bad.npy", &arr2(&[[1f32, 2.0, f32::INFINITY]]));
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npy", "input 'x'", "+inf at element 2"],
        },
        Bad {
            what: "-inf in one row of a stack",
            make: |d| {
                d.npy(
                    "stack.npy",
                    &arr2(&[
                        [0f32, 0.0, 0.0],
                        [0.0, 0.0, 0.0],
                        [0.0, -f32::INFINITY, 0.0],
                    ]),
                )
            },
            inputs: X,
            kind: None,
            expected: &["stack.npy[2]", "input 'x'", "-inf at element 1"],
        },
        Bad {
            what: "NaN in test data",
            make: |d| {
                d.pb(
                    "t/test_data_set_0/input_0.pb",
                    &f32_proto("x", &[1, 3], &[0.0, f32::NAN, 1.0], true),
                );
                d.path("t")
            },
            inputs: X,
            kind: None,
            expected: &["test_data_set_0", "input_0.pb", "input 'x'", "NaN"],
        },
        Bad {
            what: "empty folder",
            make: |d| {
                let path = d.root().join("empty");
                fs::create_dir(&path).unwrap();
                path
            },
            inputs: X,
            kind: None,
            expected: &[
                "empty",
                "no calibration samples found",
                "*.npz",
                "test_data_set_*",
            ],
        },
        Bad {
            what: "no files of the given kind",
            make: |d| {
                d.bytes("d/notes.txt", b"hello");
                d.path("d")
            },
            inputs: X,
            kind: Some(SourceKind::Npz),
            expected: &["d: ", "no .npz files in the folder"],
        },
        Bad {
            what: "corrupt image",
            make: |d| {
                d.bytes("imgs/bad.png", b"this is not a png");
                d.path("imgs")
            },
            inputs: IMG,
            kind: None,
            expected: &["bad.png", "input 'images'", "cannot read the image"],
        },
        Bad {
            what: "truncated image",
            make: |d| {
                let path = d.png(
                    "imgs/cut.png",
                    &RgbImage::from_pixel(64, 64, Rgb([1, 2, 3])),
                );
                let bytes = fs::read(&path).unwrap();
                fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
                d.path("imgs")
            },
            inputs: IMG,
            kind: None,
            expected: &["cut.png", "input 'images'", "cannot read the image"],
        },
        Bad {
            what: "npy folder for a two-input model",
            make: |d| {
                d.npy("d/a.npy", &arr2(&[[1f32, 2.0, 3.0]]))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            inputs: XY,
            kind: None,
            expected: &["2 inputs (x, y)", ".npz keyed by input name"],
        },
        Bad {
            what: "stacked npy for a two-input model",
            make: |d| d.npy("s.npy", &arr2(&[[1f32, 2.0, 3.0]])),
            inputs: XY,
            kind: None,
            expected: &["s.npy", "2 inputs (x, y)"],
        },
        Bad {
            what: "stacked npy whose rows do not fit the rank",
            make: |d| d.npy("s.npy", &arr2(&[[1f32, 2.0, 3.0]])),
            inputs: &[("x", DataType::Float, "N,3,1,1")],
            kind: None,
            expected: &[
                "s.npy",
                "input 'x'",
                "[1,3]",
                "rows [3] (or [1,3]",
                "[N,3,1,1]",
            ],
        },
        Bad {
            what: "stacked npy with a wrong static dim",
            make: |d| d.npy("s.npy", &arr2(&[[1f32, 2.0], [3.0, 4.0]])),
            inputs: X,
            kind: None,
            expected: &["s.npy", "input 'x'", "[1,2]", "[N,3]"],
        },
        Bad {
            what: "test data of the wrong dtype",
            make: |d| {
                let t = TensorProto {
                    name: Some("y".into()),
                    data_type: Some(DataType::Int32 as i32),
                    dims: vec![1],
                    int32_data: vec![7],
                    ..Default::default()
                };
                d.pb(
                    "t/test_data_set_0/input_0.pb",
                    &f32_proto("x", &[1, 3], &[0.0; 3], false),
                );
                d.pb("t/test_data_set_0/input_1.pb", &t);
                d.path("t")
            },
            inputs: XY,
            kind: None,
            expected: &["input_1.pb", "input 'y'", "int32", "expects int64"],
        },
        Bad {
            what: "test data missing an input",
            make: |d| {
                d.pb(
                    "t/test_data_set_0/input_0.pb",
                    &f32_proto("", &[1, 3], &[0.0; 3], false),
                );
                d.path("t")
            },
            inputs: XY,
            kind: None,
            expected: &["test_data_set_0", "input 'y'", "no input_*.pb file"],
        },
        Bad {
            what: "test data with more files than inputs",
            make: |d| {
                for i in 0..3 {
                    let rel = format!("t/test_data_set_0/input_{i}.pb");
                    d.pb(&rel, &f32_proto("", &[1, 3], &[0.0; 3], false));
                }
                d.path("t")
            },
            inputs: X,
            kind: None,
            expected: &[
                "test_data_set_0",
                "3 input_*.pb files for 1 model inputs",
                "input_1.pb",
            ],
        },
        Bad {
            what: "corrupt TensorProto",
            make: |d| {
                d.bytes("t/test_data_set_0/input_0.pb", &[0xff; 7]);
                d.path("t")
            },
            inputs: X,
            kind: None,
            expected: &["input_0.pb", "not a valid TensorProto"],
        },
        Bad {
            what: "corrupt npz",
            make: |d| {
                d.bytes("d/bad.npz", b"PK but not really a zip archive");
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "not a zip archive"],
        },
        Bad {
            what: "npz with a damaged member",
            make: |d| {
                let value = 12345.678f32;
                let path = d.npz("d/bad.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, value, 3.0]])).unwrap()
                });
                let mut bytes = fs::read(&path).unwrap();
                let at = bytes
                    .windows(4)
                    .position(|w| w == value.to_le_bytes())
                    .unwrap();
                bytes[at] ^= 1;
                fs::write(&path, bytes).unwrap();
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["bad.npz", "input 'x'", "CRC"],
        },
        Bad {
            what: "mixed folder",
            make: |d| {
                d.npz("d/a.npz", |w| {
                    w.add_array("x", &arr2(&[[1f32, 2.0, 3.0]])).unwrap()
                });
                d.png("d/b.png", &RgbImage::new(1, 1));
                d.path("d")
            },
            inputs: X,
            kind: None,
            expected: &["mixes", "1 .npz files, 1 image files", "give the kind"],
        },
        Bad {
            what: "images for an int8 input",
            make: |d| {
                d.png("imgs/a.png", &RgbImage::new(4, 4))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            inputs: &[("images", DataType::Int8, "1,3,4,4")],
            kind: None,
            expected: &[
                "input 'images'",
                "float32 tensors of rank 4",
                "int8 [1,3,4,4]",
            ],
        },
        Bad {
            what: "images for a symbolic size without a size",
            make: |d| {
                d.png("imgs/a.png", &RgbImage::new(4, 4))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            inputs: &[("images", DataType::Float, "N,3,H,W")],
            kind: None,
            expected: &[
                "input 'images'",
                "[N,3,H,W]",
                "symbolic",
                "give the image size",
            ],
        },
        Bad {
            what: "images for a one-channel input",
            make: |d| {
                d.png("imgs/a.png", &RgbImage::new(4, 4))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            inputs: &[("images", DataType::Float, "1,1,28,28")],
            kind: None,
            expected: &["input 'images'", "[1,1,28,28]", "1 channels"],
        },
        Bad {
            what: "missing path",
            make: |d| d.root().join("nowhere"),
            inputs: X,
            kind: None,
            expected: &["nowhere"],
        },
        Bad {
            what: "unknown file type",
            make: |d| d.bytes("data.csv", b"1,2,3"),
            inputs: X,
            kind: None,
            expected: &["data.csv", "cannot tell the kind"],
        },
    ]
}

#[test]
fn bad_data_is_refused_with_a_message_naming_file_and_input() {
    for case in bad_cases() {
        let dir = Dir::new();
        let err = first_error(&case, &dir);
        for expected in case.expected {
            assert!(
                err.contains(expected),
                "{}: expected `{expected}` in the message:\n{err}",
                case.what
            );
        }
    }
}

#[test]
fn a_limit_of_zero_is_an_error() {
    let dir = Dir::new();
    dir.npy("d/a.npy", &arr1(&[1f32]));
    let err = DataSource::open(&dir.path("d"), None, &f32_input("1"), None, Some(0)).unwrap_err();
    assert!(err.to_string().contains("limit of 0"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Damaged compressed archives, through the command line

/// Longest the refusal of a damaged file may take.
const REFUSAL_LIMIT: Duration = Duration::from_secs(20);

/// Runs `onnx-ptq args…`, killing it after `REFUSAL_LIMIT`: (exit code, stderr, time taken).
fn run_cli(args: &[&Path]) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > REFUSAL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("onnx-ptq {args:?} did not finish within {REFUSAL_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), stderr.join().unwrap(), start.elapsed())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn damaged_compressed_npz_exits_2_naming_file_and_member() {
    let dir = Dir::new();
    let model = fixture("cnn.onnx");
    npz_pair(&model, &dir.path("src"), 1, None);
    let good = fs::read(dir.path("src/compressed/sample_000.npz")).unwrap();
    // np.savez_compressed writes one local header (with a ZIP64 extra field), the deflate
    // stream, then the central directory.
    assert!(good.starts_with(b"PK\x03\x04"));
    let name_len = usize::from(u16::from_le_bytes([good[26], good[27]]));
    let extra_len = usize::from(u16::from_le_bytes([good[28], good[29]]));
    let data_start = 30 + name_len + extra_len;
    let c = good.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let compressed = u32_at(&good, c + 20) as usize;
    let size = u32_at(&good, c + 24);
    assert_eq!(good[c + 10], 8, "not deflated");
    assert!(data_start + compressed <= c);

    let flip = |at: usize| {
        let mut b = good.clone();
        for x in &mut b[at..at + 8] {
            *x ^= 0xA5;
        }
        b
    };
    let mut wrong_crc = good.clone();
    set_u32(&mut wrong_crc, 14, u32_at(&good, 14) ^ 1);
    set_u32(&mut wrong_crc, c + 16, u32_at(&good, c + 16) ^ 1);
    let mut huge = good.clone();
    set_u32(&mut huge, c + 24, 0xFFFF_FFF0);
    let mut off_by_4 = good.clone();
    set_u32(&mut off_by_4, c + 24, size + 4);
    let mut past_end = good.clone();
    set_u32(&mut past_end, c + 20, good.len() as u32);

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "bytes flipped at the start of the deflate stream",
            flip(data_start),
            &[],
        ),
        (
            "bytes flipped mid-stream",
            flip(data_start + compressed / 2),
            &[],
        ),
        (
            "bytes flipped near the stream's end",
            flip(data_start + compressed - 10),
            &[],
        ),
        ("a wrong CRC", wrong_crc, &["CRC"]),
        (
            "a file cut in half",
            good[..good.len() / 2].to_vec(),
            &["truncated"],
        ),
        (
            "a file missing its last byte",
            good[..good.len() - 1].to_vec(),
            &["truncated"],
        ),
        (
            "a member claiming 4 GB uncompressed",
            huge,
            &["4294967280", "more than deflate"],
        ),
        (
            "a member claiming 4 bytes more than its array",
            off_by_4,
            &["array header announces float32 [2,3,32,32]"],
        ),
        (
            "a member whose data runs past the end",
            past_end,
            &["past the end"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, bytes, mentions)) in cases.iter().enumerate() {
        let data = dir.path(&format!("bad{i}/sample_000.npz"));
        fs::write(&data, bytes).unwrap();
        let out = dir.path(&format!("bad{i}.json"));
        let (code, stderr, took) = run_cli(&[
            Path::new("calibrate"),
            &model,
            Path::new("--calib"),
            data.parent().unwrap(),
            Path::new("-o"),
            &out,
            Path::new("-q"),
        ]);
        let mut problems = Vec::new();
        if code != Some(2) {
            problems.push(format!("exit code {code:?}, expected 2"));
        }
        if stderr.contains("panicked") {
            problems.push("a panic".into());
        }
        let file = data.to_str().unwrap();
        for m in [file, "member 'x.npy'"].iter().chain(mentions.iter()) {
            if !stderr.contains(m) {
                problems.push(format!("stderr does not mention {m:?}"));
            }
        }
        if out.exists() {
            problems.push("ranges were written".into());
        }
        if took > Duration::from_secs(5) {
            problems.push(format!("took {took:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("[{what}] {}\n{stderr}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
