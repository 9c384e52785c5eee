//! Images as calibration data: decode (PNG, JPEG), convert to RGB, resize to the model's input
//! size, reorder channels, normalize and lay out as a float32 `[1,3,H,W]` or `[1,H,W,3]` tensor.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use image::imageops::{self, FilterType};
use image::{ImageReader, Rgb, RgbImage};
use tract_onnx::prelude::Tensor;

use super::{check, data_error, parse_name, InputSpec};
use crate::engine;
use crate::error::{Error, Result};
use crate::graph::Dim;
use crate::onnx::pb::tensor_proto::DataType;

/// How much of the resized image [`ResizeMode::CenterCrop`] keeps: the image is resized so that
/// the target size covers this fraction of it (224 out of 256, as ImageNet evaluation does),
/// then the center is cut out.
pub const CENTER_CROP_FRACTION: f32 = 0.875;

/// How an image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Resize to exactly the target size, ignoring the aspect ratio.
    Stretch,
    /// Resize to fit inside the target keeping the aspect ratio, and pad the rest (centered)
    /// with [`ImagePreprocess::pad_value`], as YOLO models expect.
    Letterbox,
    /// Resize keeping the aspect ratio so that the target covers [`CENTER_CROP_FRACTION`] of
    /// the image, then cut out the center.
    CenterCrop,
}

/// Order of the three color channels in the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (OpenCV- and Caffe-trained models).
    Bgr,
}

/// Memory layout of the image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 3, H, W]`.
    Nchw,
    /// `[1, H, W, 3]`.
    Nhwc,
}

macro_rules! named {
    ($ty:ident, $what:literal, [$(($variant:ident, $name:literal)),*]) => {
        impl $ty {
            /// Every value with its flag spelling.
            pub const ALL: &'static [($ty, &'static str)] = &[$(($ty::$variant, $name)),*];
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($ty::$variant => $name),* })
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                parse_name($what, s, Self::ALL)
            }
        }
    };
}

named!(
    ResizeMode,
    "resize mode",
    [
        (Stretch, "stretch"),
        (Letterbox, "letterbox"),
        (CenterCrop, "center-crop")
    ]
);
named!(ChannelOrder, "channel order", [(Rgb, "rgb"), (Bgr, "bgr")]);
named!(Layout, "layout", [(Nchw, "nchw"), (Nhwc, "nhwc")]);

/// How images become model input: `value = (pixel * scale - mean[c]) / std[c]` for output
/// channel `c` (after reordering, so `mean` and `std` are in the model's channel order).
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePreprocess {
    /// Target `(width, height)`; `None` takes them from the model input's static dims.
    pub size: Option<(u32, u32)>,
    /// How the image is brought to the target size.
    pub resize: ResizeMode,
    /// Channel order of the model input.
    pub channel_order: ChannelOrder,
    /// Factor applied to the 0-255 pixel values first (1/255 maps them to 0-1).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by last.
    pub std: [f32; 3],
    /// Tensor layout.
    pub layout: Layout,
    /// Value of the letterbox padding, per channel before scaling (114 for YOLO).
    pub pad_value: u8,
}

impl Default for ImagePreprocess {
    /// Stretch, RGB, scale 1/255, mean 0, std 1, NCHW, padding 0, size from the model.
    fn default() -> Self {
        ImagePreprocess {
            size: None,
            resize: ResizeMode::Stretch,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: Layout::Nchw,
            pad_value: 0,
        }
    }
}

impl ImagePreprocess {
    /// Names accepted by [`ImagePreprocess::preset`].
    pub const PRESETS: &'static [&'static str] = &["imagenet", "yolo"];

    /// A named set of settings. `imagenet`: center crop (shorter side resized to
    /// size/0.875), RGB, 1/255, mean `[0.485,0.456,0.406]`, std `[0.229,0.224,0.225]`, NCHW.
    /// `yolo`: letterbox padded with 114, RGB, 1/255, mean 0, std 1, NCHW.
    pub fn preset(name: &str) -> Result<ImagePreprocess> {
        match name.trim().to_ascii_lowercase().as_str() {
            "imagenet" => Ok(ImagePreprocess {
                resize: ResizeMode::CenterCrop,
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
                ..ImagePreprocess::default()
            }),
            "yolo" => Ok(ImagePreprocess {
                resize: ResizeMode::Letterbox,
                pad_value: 114,
                ..ImagePreprocess::default()
            }),
            _ => Err(Error::Model(format!(
                "unknown image preset '{name}' (presets: {})",
                Self::PRESETS.join(", ")
            ))),
        }
    }

    /// Where the channel, height and width axes sit in the rank-4 tensor.
    fn axes(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        }
    }
}

/// Preprocessing resolved against the model input: settings plus the target size.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pre: ImagePreprocess,
    width: u32,
    height: u32,
}

impl Plan {
    /// Checks that the model has one float32 rank-4 input that images can feed and settles the
    /// target size. Errors name `root`, the data path.
    pub fn new(root: &Path, pre: &ImagePreprocess, inputs: &[InputSpec]) -> Result<Plan> {
        let [spec] = inputs else {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(data_error(
                root,
                None,
                format!(
                    "images feed a model with one image input, but this model has {} inputs ({})",
                    inputs.len(),
                    names.join(", ")
                ),
            ));
        };
        let fail = |m: String| Err(data_error(root, Some(&spec.name), m));
        if spec.elem_type != DataType::Float || spec.shape.len() != 4 {
            return fail(format!(
                "images become float32 tensors of rank 4 but the model input is {} {}",
                check::dtype_name(spec.elem_type),
                spec.shape_string()
            ));
        }
        let (c_axis, h_axis, w_axis) = pre.axes();
        let fixed = |axis: usize| match spec.shape[axis] {
            Dim::Value(v) if v >= 0 => Some(v),
            _ => None,
        };
        if let Some(c) = fixed(c_axis).filter(|&c| c != 3) {
            return fail(format!(
                "the model input {} has {c} channels at axis {c_axis} for layout {} but images \
                 give 3 (is the layout right?)",
                spec.shape_string(),
                pre.layout
            ));
        }
        if let Some(n) = fixed(0).filter(|&n| n != 1) {
            return fail(format!(
                "the model input {} has a batch of {n} but each image is one sample (batch 1)",
                spec.shape_string()
            ));
        }
        let model_size = fixed(w_axis).zip(fixed(h_axis));
        let (width, height) = match (pre.size, model_size) {
            (Some(size), None) => size,
            (Some((w, h)), Some((mw, mh))) if i64::from(w) == mw && i64::from(h) == mh => (w, h),
            (Some((w, h)), Some((mw, mh))) => {
                return fail(format!(
                    "image size {w}x{h} does not match the model input {} ({mw}x{mh})",
                    spec.shape_string()
                ))
            }
            (None, Some((w, h))) => match (u32::try_from(w), u32::try_from(h)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => return fail(format!("input size {w}x{h} is too large for an image")),
            },
            (None, None) => {
                return fail(format!(
                    "the model input {} has a symbolic height or width; give the image size",
                    spec.shape_string()
                ))
            }
        };
        if width == 0 || height == 0 {
            return fail(format!("image size {width}x{height} is empty"));
        }
        // The resized image and the input tensor are each width x height x 3.
        if let Err(e) = crate::memory::check_allocation(
            u64::from(width) * u64::from(height) * 3,
            4,
            &format!("an image input of {width}x{height}"),
        ) {
            return fail(e);
        }
        let finite = pre.scale.is_finite() && pre.mean.iter().all(|m| m.is_finite());
        if !finite || pre.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return fail(format!(
                "scale {}, mean {:?} and std {:?} must be finite, with std not 0",
                pre.scale, pre.mean, pre.std
            ));
        }
        Ok(Plan {
            pre: pre.clone(),
            width,
            height,
        })
    }

    /// Decodes and preprocesses one image file for `spec`.
    pub fn load(&self, path: &Path, spec: &InputSpec) -> Result<Tensor> {
        let reader = ImageReader::open(path)
            .and_then(ImageReader::with_guessed_format)
            .map_err(|e| Error::io(path, e))?;
        let decoded = engine::guard("decoding the image", || {
            reader.decode().map_err(|e| e.to_string())
        })
        .map_err(|e| {
            data_error(
                path,
                Some(&spec.name),
                format!("cannot read the image: {e}"),
            )
        })?;
        let rgb = decoded.to_rgb8();
        if rgb.width() == 0 || rgb.height() == 0 {
            return Err(data_error(path, Some(&spec.name), "the image is empty"));
        }
        let (width, height) = (self.width, self.height);
        let sized = match self.pre.resize {
            ResizeMode::Stretch => resize(&rgb, width, height),
            ResizeMode::Letterbox => letterbox(&rgb, width, height, self.pre.pad_value),
            ResizeMode::CenterCrop => center_crop(&rgb, width, height),
        };
        self.to_tensor(&sized)
            .map_err(|e| data_error(path, Some(&spec.name), e))
    }

    fn to_tensor(&self, img: &RgbImage) -> Result<Tensor, String> {
        let (w, h) = (self.width as usize, self.height as usize);
        let pre = &self.pre;
        let mut data = vec![0f32; 3 * w * h];
        for (x, y, pixel) in img.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for c in 0..3 {
                let source = match pre.channel_order {
                    ChannelOrder::Rgb => c,
                    ChannelOrder::Bgr => 2 - c,
                };
                let v = (f32::from(pixel[source]) * pre.scale - pre.mean[c]) / pre.std[c];
                let at = match pre.layout {
                    Layout::Nchw => (c * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * 3 + c,
                };
                data[at] = v;
            }
        }
        let shape = match pre.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        };
        Tensor::from_shape(&shape, &data).map_err(|e| e.to_string())
    }
}

fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    // `imageops::resize` copies when the size is unchanged.
    imageops::resize(img, width, height, FilterType::Triangle)
}

/// Scale `(w, h)` by `r`, rounding, at least 1 pixel.
fn scaled(w: u32, h: u32, r: f64) -> (u32, u32) {
    let s = |d: u32| ((f64::from(d) * r).round() as u32).max(1);
    (s(w), s(h))
}

/// Fits the image inside `width x height` keeping its aspect ratio and centers it on a canvas
/// of `pad` (the smaller margin top and left when the margins differ by one pixel).
pub(super) fn letterbox(img: &RgbImage, width: u32, height: u32, pad: u8) -> RgbImage {
    let (w, h) = img.dimensions();
    let r = (f64::from(width) / f64::from(w)).min(f64::from(height) / f64::from(h));
    let (nw, nh) = scaled(w, h, r);
    let (nw, nh) = (nw.min(width), nh.min(height));
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([pad; 3]));
    let left = (width - nw) / 2;
    let top = (height - nh) / 2;
    imageops::replace(&mut canvas, &resize(img, nw, nh), left.into(), top.into());
    canvas
}

/// Resizes so that `width x height` covers [`CENTER_CROP_FRACTION`] of the image (keeping
/// its aspect ratio) and cuts out the center.
pub(super) fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let cover = (f64::from(width) / f64::from(w)).max(f64::from(height) / f64::from(h));
    let (nw, nh) = scaled(w, h, cover / f64::from(CENTER_CROP_FRACTION));
    let (nw, nh) = (nw.max(width), nh.max(height));
    let resized = resize(img, nw, nh);
    let left = (nw - width) / 2;
    let top = (nh - height) / 2;
    imageops::crop_imm(&resized, left, top, width, height).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_spellings_round_trip() {
        for (mode, name) in ResizeMode::ALL {
            assert_eq!(name.parse::<ResizeMode>().as_ref(), Ok(mode));
            assert_eq!(mode.to_string(), *name);
        }
        assert_eq!("BGR".parse::<ChannelOrder>(), Ok(ChannelOrder::Bgr));
        assert_eq!("nhwc".parse::<Layout>(), Ok(Layout::Nhwc));
        let err = "crop".parse::<ResizeMode>().unwrap_err();
        assert!(err.contains("stretch, letterbox, center-crop"), "{err}");
    }

    #[test]
    fn presets() {
        let imagenet = ImagePreprocess::preset("imagenet").unwrap();
        assert_eq!(imagenet.resize, ResizeMode::CenterCrop);
        assert_eq!(imagenet.std, [0.229, 0.224, 0.225]);
        let yolo = ImagePreprocess::preset("yolo").unwrap();
        assert_eq!((yolo.resize, yolo.pad_value), (ResizeMode::Letterbox, 114));
        let err = ImagePreprocess::preset("coco").unwrap_err().to_string();
        assert!(
            err.contains("'coco'") && err.contains("imagenet, yolo"),
            "{err}"
        );
    }

    #[test]
    fn letterbox_and_center_crop_geometry() {
        let img = RgbImage::from_pixel(640, 480, Rgb([1, 2, 3]));
        let boxed = letterbox(&img, 320, 320, 114);
        // 640x480 -> 320x240, 40 rows of padding above and below.
        assert_eq!(boxed.get_pixel(0, 39), &Rgb([114; 3]));
        assert_eq!(boxed.get_pixel(0, 40), &Rgb([1, 2, 3]));
        assert_eq!(boxed.get_pixel(319, 279), &Rgb([1, 2, 3]));
        assert_eq!(boxed.get_pixel(0, 280), &Rgb([114; 3]));
        // ImageNet: 500x375 -> 341x256 -> center 224x224.
        let img = RgbImage::from_pixel(500, 375, Rgb([9, 9, 9]));
        assert_eq!(center_crop(&img, 224, 224).dimensions(), (224, 224));
        let (nw, nh) = scaled(500, 375, (224.0 / 375.0) / f64::from(CENTER_CROP_FRACTION));
        assert_eq!((nw, nh), (341, 256));
    }
}
