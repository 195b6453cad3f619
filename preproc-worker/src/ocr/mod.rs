//! OCR's CPU steps as pure functions: PaddleOCR's PP-OCRv4 pipeline as the
//! Python package rapidocr-onnxruntime 1.4.4 runs it, with the arithmetic of
//! the OpenCV (5.0), pyclipper and NumPy calls it makes reproduced, so that an
//! executor can call them between the detector, classifier and recognizer
//! runs and get rapidocr's boxes and texts. No I/O, no shared memory, no
//! models, no clocks: images and model outputs in, tensors, boxes and text out.
//!
//! One request, in order:
//! 1. [`det_prepare`] (rapidocr's `preprocess` + `maybe_add_letterbox`), then
//!    [`det_input`] → detector (1x3xHxW FP32, BGR) → probability map.
//! 2. [`db_boxes`] on that map: text quads in the prepared image, reading order.
//! 3. Per quad, [`crop`]; [`cls_input`] → classifier → [`cls_rotates`] says
//!    whether to [`rotate180`] the crop.
//! 4. [`rec_input`] at a padded width ([`rec_width`], [`rec_batches`] or
//!    [`bucket_width`]) → recognizer → [`ctc_decode`] with the charset from
//!    [`charset_from_metadata`]; rapidocr keeps texts scoring >= [`TEXT_SCORE`].
//! 5. [`to_original`] maps each kept quad to the caller's image.
//!
//! Images are [`Rgb`] (our decoder's RGB8); rapidocr works on BGR arrays, and
//! every per-channel step here is order-independent, so only the tensor
//! writers swap to BGR. Coordinates are pixels, x right and y down.

mod contours;
mod crop;
mod db;
mod det;
mod geometry;
mod raster;
mod resize;
mod text;
mod unclip;

pub use crop::{crop, crop_image, rotate180};
pub use db::{DbParams, db_boxes};
pub use det::{DetParams, DetPrep, DetSizes, det_input, det_input_len, det_prepare, det_sizes, to_original};
pub use text::{
    CLS_HEIGHT, CLS_THRESH, CLS_WIDTH, REC_HEIGHT, REC_MIN_WIDTH, RecBatch, TEXT_SCORE, bucket_width,
    charset_from_metadata, cls_input, cls_input_len, cls_rotates, ctc_decode, rec_batches, rec_input, rec_input_len,
    rec_width, rec_width_from,
};

pub use crate::image::Rgb;

/// Checks that `img` is a whole, non-empty RGB8 image.
fn check(img: &Rgb) -> Result<(), OcrError> {
    if img.width == 0 || img.height == 0 || img.data.len() != img.width as usize * img.height as usize * 3 {
        return Err(OcrError::BadImage { width: img.width, height: img.height, len: img.data.len() });
    }
    Ok(())
}

/// A text box: top-left, top-right, bottom-right, bottom-left corners, in
/// pixels (x, y). [`db_boxes`] gives whole numbers, as rapidocr does.
pub type Quad = [[f32; 2]; 4];

#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error("the image is {width}x{height} with {len} bytes; RGB8 needs at least 1x1 and width * height * 3 bytes")]
    BadImage { width: u32, height: u32, len: usize },
    #[error(
        "the image is {width}x{height}: scaled for text detection, its shorter side rounds to 0 pixels, which \
         rapidocr rejects as well; with the default limits an image whose longer side exceeds 2000 px is accepted \
         up to a side ratio of about 117:1"
    )]
    TooThin { width: u32, height: u32 },
    #[error(
        "the probability map has {len} values for {width}x{height}; the detector's output for this image is {expected_w}x{expected_h}"
    )]
    BadMap { len: usize, width: usize, height: usize, expected_w: u32, expected_h: u32 },
    #[error("the recognizer output has {len} values, not a multiple of its {classes} classes")]
    BadLogits { len: usize, classes: usize },
    #[error(
        "the recognizer has {classes} classes but the charset has {charset} entries (blank + characters + space); they must match"
    )]
    CharsetMismatch { classes: usize, charset: usize },
    #[error("the output buffer holds {actual} bytes but this tensor is {expected}; this is a bug")]
    OutputSize { expected: usize, actual: usize },
}

/// Writes `v` as little-endian FP32 at element `i` of `out`.
fn put_f32(out: &mut [u8], i: usize, v: f32) {
    out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

fn check_len(out: &[u8], expected: usize) -> Result<(), OcrError> {
    if out.len() != expected {
        return Err(OcrError::OutputSize { expected, actual: out.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
