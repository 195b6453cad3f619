//! How a model's images become its input tensor (`[preprocess]`) and its
//! outputs the answer to an image request (`[postprocess]`).

use serde::{Deserialize, Serialize};

/// How the image is resized to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Resize to exactly `width` x `height`, ignoring the aspect ratio.
    Stretch,
    /// Scale to `height`, width by aspect ratio capped at `width`, and pad the
    /// right with `pad_value` (PaddleOCR's classifier and recognizer input).
    FitHeightPadRight,
    /// Scale the shorter side to `resize_shorter`, then crop the centre
    /// `width` x `height` (the ImageNet evaluation transform).
    CenterCrop,
}

/// Where a model's images are decoded and preprocessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeOn {
    /// In the preproc pool: libjpeg-turbo / PNG, resize, normalize.
    #[default]
    Cpu,
    /// In the inference worker, where it drives a GPU: JPEGs by nvJPEG,
    /// raw frames copied from their pinned slot, then resized and normalized
    /// by the preprocessing kernel; the preproc pool only checks headers.
    /// Without a GPU the preproc pool does it, as with `cpu`.
    Gpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelOrder {
    RGB,
    BGR,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    NCHW,
    NHWC,
}

/// Image → tensor. Each channel becomes `(pixel * scale - mean) / std`; the
/// element type is the input's `datatype` (FP32, FP16, or UINT8, which takes
/// the resized pixels unnormalized).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Which input receives the image; default: the model's only input.
    #[serde(default)]
    pub input: Option<String>,
    pub resize: ResizeMode,
    pub width: u32,
    pub height: u32,
    /// For `center_crop`: the shorter side before cropping (default: 256/224
    /// of the larger of width and height, as in ImageNet evaluation).
    #[serde(default)]
    pub resize_shorter: Option<u32>,
    #[serde(default = "rgb")]
    pub channel_order: ChannelOrder,
    #[serde(default = "nchw")]
    pub layout: Layout,
    #[serde(default = "inv255")]
    pub scale: f32,
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// Value of padded elements, in the normalized output's units.
    #[serde(default)]
    pub pad_value: f32,
    /// `"cpu"` (default) or `"gpu"`: see [`DecodeOn`].
    #[serde(default)]
    pub decode: DecodeOn,
}

fn rgb() -> ChannelOrder {
    ChannelOrder::RGB
}
fn nchw() -> Layout {
    Layout::NCHW
}
fn inv255() -> f32 {
    1.0 / 255.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostprocessKind {
    /// Top-k classes with labels and scores.
    Classification,
}

/// Output → answer for image requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postprocess {
    pub kind: PostprocessKind,
    /// Which output holds the scores; default: the model's only output.
    #[serde(default)]
    pub output: Option<String>,
    /// How many classes to return (capped by the number of classes).
    #[serde(default = "five")]
    pub top_k: u32,
    /// Apply softmax to the output first (for models that emit logits).
    #[serde(default)]
    pub softmax: bool,
    /// Class labels by index; classes without one are reported by index.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn five() -> u32 {
    5
}

impl Preprocess {
    /// The tensor one image becomes, without the batch dimension.
    pub fn image_dims(&self) -> [i64; 3] {
        let (w, h) = (self.width as i64, self.height as i64);
        match self.layout {
            Layout::NCHW => [3, h, w],
            Layout::NHWC => [h, w, 3],
        }
    }

    /// The shorter side before a centre crop.
    pub fn shorter_side(&self) -> u32 {
        self.resize_shorter.unwrap_or_else(|| (self.width.max(self.height) as f32 * 256.0 / 224.0).round() as u32)
    }
}
