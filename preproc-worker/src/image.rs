//! Request bodies (JPEG, PNG, raw frames) → interleaved RGB8 pixels.
//!
//! Two steps, so the caller can size the decode to what the model needs:
//! [`probe`] reads only the header and enforces [`DecodeLimits`] before a pixel
//! is decoded; [`decode_into`] then decodes into a reusable buffer, for JPEG at
//! the smallest DCT scale that still covers the requested size.

use std::cell::RefCell;
use std::fmt;
use std::io::Cursor;

use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

/// What this module decodes, for error messages.
const ACCEPTED: &str =
    "accepted: JPEG (image/jpeg), PNG (image/png) and raw frames (video/x-raw; format=RGB|BGR|NV12; width=W; height=H)";

const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Cap on the PNG decoder's own allocations (row buffers, zlib state, metadata
/// chunks); our output buffer is not counted. A 16384-wide 16-bit RGBA row is
/// 128 KiB, so this only ever stops hostile ancillary chunks.
const PNG_DECODER_MEMORY: usize = 16 << 20;

/// libjpeg-turbo's advice for untrusted input: a progressive JPEG with
/// thousands of tiny scans makes decoding take minutes.
const JPEG_SCAN_LIMIT: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the body is empty; send a JPEG or PNG image")]
    Empty,
    #[error("the body is not a JPEG or PNG image (it starts with {start}); {ACCEPTED}")]
    UnknownFormat { start: String },
    #[error(
        "image is {width}x{height} pixels; the limit is {max_side} pixels per side and {max_pixels} pixels in all \
         (config: max_image_side, max_image_pixels)"
    )]
    TooLarge { width: u64, height: u64, max_side: u32, max_pixels: u64 },
    #[error("the {format} data is corrupt or truncated: {message}; {ACCEPTED}, as complete files")]
    Corrupt { format: ImageFormat, message: String },
    #[error(
        "decode_into was given the header of a {probed} image of {probed_w}x{probed_h} but the data is a {format} \
         image of {width}x{height}; pass the ImageInfo that probe returned for these same bytes"
    )]
    InfoMismatch { probed: ImageFormat, probed_w: u32, probed_h: u32, format: ImageFormat, width: u64, height: u64 },
    #[error("the JPEG decoder could not be created: {0}")]
    DecoderInit(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    /// A raw video frame with its `shm::frame` header.
    Frame(shm::frame::PixelFormat),
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Frame(_) => "video/x-raw",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageFormat::Jpeg => f.write_str("JPEG"),
            ImageFormat::Png => f.write_str("PNG"),
            ImageFormat::Frame(p) => write!(f, "raw {} frame", p.name()),
        }
    }
}

/// What [`probe`] learned from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Largest image accepted, checked against the header before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
}

impl Default for DecodeLimits {
    /// 40 megapixels (a 120 MB RGB buffer) covers common camera photos; the
    /// side limit stops strips such as 1 x 40M that fit the pixel budget.
    fn default() -> Self {
        DecodeLimits { max_pixels: 40_000_000, max_side: 16384 }
    }
}

/// An interleaved RGB8 image: `height` rows of `width` pixels, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb {
    /// A black image.
    pub fn black(width: u32, height: u32) -> Rgb {
        Rgb { width, height, data: vec![0; width as usize * height as usize * 3] }
    }
}

/// [`probe`] (so `limits` hold) then [`decode_into`] a new image at full size.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb, ImageError> {
    let info = probe(bytes, limits)?;
    let mut data = Vec::new();
    let (width, height) = decode_into(bytes, &info, None, &mut data)?;
    Ok(Rgb { width, height, data })
}

/// Identifies the format by its magic bytes (the Content-Type is not trusted).
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        Err(ImageError::Empty)
    } else if bytes.starts_with(JPEG_MAGIC) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(PNG_MAGIC) {
        Ok(ImageFormat::Png)
    } else if shm::frame::is_frame(bytes) {
        // The frontend wrote the header; a bad one is a bug there, but still
        // only this request's error. `probe` checks the rest of it.
        let code = bytes.get(8).copied().unwrap_or(u8::MAX);
        let format = shm::frame::PixelFormat::from_u8(code).ok_or_else(|| ImageError::Corrupt {
            format: ImageFormat::Frame(shm::frame::PixelFormat::Rgb24),
            message: format!("unknown pixel format code {code}"),
        })?;
        Ok(ImageFormat::Frame(format))
    } else {
        Err(ImageError::UnknownFormat { start: describe_start(bytes) })
    }
}

/// `3c 68 74 6d 6c 3e 0a 3c ("<html>.<")`: hex is exact, the text makes HTML,
/// JSON or a GIF signature recognisable at a glance.
fn describe_start(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
    format!("{} (\"{text}\")", hex.join(" "))
}

/// Reads the header and checks the size against `limits`; decodes no pixels,
/// so a decompression bomb costs only its header.
pub fn probe(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageInfo, ImageError> {
    let format = sniff(bytes)?;
    let (width, height) = match format {
        ImageFormat::Jpeg => with_jpeg(|d| {
            let h = d.read_header(bytes).map_err(jpeg_corrupt)?;
            Ok((h.width as u64, h.height as u64))
        })?,
        ImageFormat::Png => {
            let mut decoder = png_decoder(bytes);
            let info = decoder.read_header_info().map_err(|e| corrupt(format, e))?;
            (u64::from(info.width), u64::from(info.height))
        }
        ImageFormat::Frame(_) => {
            let (info, _) = shm::frame::parse(bytes).map_err(|e| corrupt(format, e))?;
            (u64::from(info.width), u64::from(info.height))
        }
    };
    let too_large =
        width > u64::from(limits.max_side) || height > u64::from(limits.max_side) || width * height > limits.max_pixels;
    if too_large {
        return Err(ImageError::TooLarge { width, height, max_side: limits.max_side, max_pixels: limits.max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(corrupt(format, format!("the header says {width}x{height} pixels")));
    }
    // Both fit in u32: they are at most max_side.
    Ok(ImageInfo { format, width: width as u32, height: height as u32 })
}

/// Decodes `bytes` (already accepted by [`probe`], which gave `info`) to RGB8,
/// interleaved, rows packed, into `buf`, and returns the decoded size; after
/// the call `buf.len()` is `width * height * 3`. `buf` keeps its capacity, so
/// a warm buffer is never reallocated.
///
/// `scale_to = Some((w, h))` lets a JPEG decode at 1/8, 1/4 or 1/2 size (DCT
/// scaling, several times cheaper) as long as the result is still at least
/// `w` x `h`; PNG always decodes at full size.
pub fn decode_into(
    bytes: &[u8],
    info: &ImageInfo,
    scale_to: Option<(u32, u32)>,
    buf: &mut Vec<u8>,
) -> Result<(u32, u32), ImageError> {
    let format = sniff(bytes)?;
    let check = |width: u64, height: u64| {
        if format == info.format && width == u64::from(info.width) && height == u64::from(info.height) {
            Ok(())
        } else {
            // The limits were checked on `info`: never decode anything else.
            Err(ImageError::InfoMismatch {
                probed: info.format,
                probed_w: info.width,
                probed_h: info.height,
                format,
                width,
                height,
            })
        }
    };
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, scale_to, buf, check),
        ImageFormat::Png => decode_png(bytes, buf, check),
        ImageFormat::Frame(_) => {
            let (frame, pixels) = shm::frame::parse(bytes).map_err(|e| corrupt(format, e))?;
            check(u64::from(frame.width), u64::from(frame.height))?;
            let factor = crate::frame::reduction(frame.width, frame.height, scale_to);
            Ok(crate::frame::to_rgb_reduced(&frame, pixels, factor, buf))
        }
    }
}

/// [`decode_into`], but a raw RGB frame that needs no reduction is returned
/// as it lies in `bytes` (the request's slot) instead of being copied into
/// `buf`: the pixels and their size.
pub fn pixels<'a>(
    bytes: &'a [u8],
    info: &ImageInfo,
    scale_to: Option<(u32, u32)>,
    buf: &'a mut Vec<u8>,
) -> Result<(u32, u32, &'a [u8]), ImageError> {
    if info.format == ImageFormat::Frame(shm::frame::PixelFormat::Rgb24)
        && crate::frame::reduction(info.width, info.height, scale_to) == 1
    {
        let (frame, pixels) = shm::frame::parse(bytes).map_err(|e| corrupt(info.format, e))?;
        if (frame.width, frame.height) == (info.width, info.height) {
            return Ok((frame.width, frame.height, pixels));
        }
    }
    let (w, h) = decode_into(bytes, info, scale_to, buf)?;
    Ok((w, h, buf.as_slice()))
}

thread_local! {
    // tj3Init allocates libjpeg's state (tens of KB): one decompressor per
    // thread, reused by every call instead of one per image.
    static JPEG: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

fn with_jpeg<T>(f: impl FnOnce(&mut Decompressor) -> Result<T, ImageError>) -> Result<T, ImageError> {
    JPEG.with(|cell| {
        // `f` never calls back into this function, so the borrow cannot clash.
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut d = Decompressor::new().map_err(|e| ImageError::DecoderInit(e.to_string()))?;
            d.set_scan_limit(JPEG_SCAN_LIMIT).map_err(|e| ImageError::DecoderInit(e.to_string()))?;
            *slot = Some(d);
        }
        let result = f(slot.as_mut().expect("the decompressor was created just above; this is a bug"));
        if result.is_err() {
            // libjpeg-turbo can leave a handle mid-header after an error (the
            // next good image then fails with "Bogus DQT index"): start afresh.
            *slot = None;
        }
        result
    })
}

/// The smallest DCT scale whose output still covers `target` on both sides.
/// Only the power-of-two factors: libjpeg-turbo has SIMD IDCTs for those
/// alone, so 3/8 or 5/8 would decode slower than 1/2.
fn jpeg_scale(width: usize, height: usize, lossless: bool, target: Option<(u32, u32)>) -> ScalingFactor {
    if lossless {
        // libjpeg-turbo cannot scale lossless JPEGs.
        return ScalingFactor::ONE;
    }
    // libjpeg-turbo rounds scaled sides up, as `reduction` does.
    match crate::frame::reduction(width as u32, height as u32, target) {
        8 => ScalingFactor::ONE_EIGHTH,
        4 => ScalingFactor::ONE_QUARTER,
        2 => ScalingFactor::ONE_HALF,
        _ => ScalingFactor::ONE,
    }
}

fn decode_jpeg(
    bytes: &[u8],
    scale_to: Option<(u32, u32)>,
    buf: &mut Vec<u8>,
    check: impl Fn(u64, u64) -> Result<(), ImageError>,
) -> Result<(u32, u32), ImageError> {
    with_jpeg(|d| {
        let header = d.read_header(bytes).map_err(jpeg_corrupt)?;
        check(header.width as u64, header.height as u64)?;
        let factor = jpeg_scale(header.width, header.height, header.is_lossless, scale_to);
        d.set_scaling_factor(factor).map_err(jpeg_corrupt)?;
        let (width, height) = (factor.scale(header.width), factor.scale(header.height));
        // libjpeg-turbo converts YCbCr and RGB JPEGs to RGB itself. It has no
        // CMYK → RGB conversion, and none from greyscale for lossless JPEGs, so
        // those decode to their own pixel format and are widened here.
        let pixel_format = match header.colorspace {
            Colorspace::CMYK | Colorspace::YCCK => PixelFormat::CMYK,
            Colorspace::Gray => PixelFormat::GRAY,
            _ => PixelFormat::RGB,
        };
        let pixels = width * height;
        let channels = pixel_format.size();
        set_len(buf, pixels * channels.max(3));
        let image = turbojpeg::Image {
            pixels: &mut buf[..pixels * channels],
            width,
            pitch: width * channels,
            height,
            format: pixel_format,
        };
        d.decompress(bytes, image).map_err(jpeg_corrupt)?;
        match pixel_format {
            PixelFormat::CMYK => cmyk_to_rgb_in_place(buf, pixels),
            PixelFormat::GRAY => widen_to_rgb_in_place(buf, pixels, 1),
            _ => {}
        }
        buf.truncate(pixels * 3);
        // At most the probed size, which fits in u32.
        Ok((width as u32, height as u32))
    })
}

fn png_decoder(bytes: &[u8]) -> png::Decoder<Cursor<&[u8]>> {
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: PNG_DECODER_MEMORY });
    // Text and colour profiles are never used; skipping them avoids inflating
    // compressed metadata chunks.
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    decoder
}

fn decode_png(
    bytes: &[u8],
    buf: &mut Vec<u8>,
    check: impl Fn(u64, u64) -> Result<(), ImageError>,
) -> Result<(u32, u32), ImageError> {
    let format = ImageFormat::Png;
    let mut decoder = png_decoder(bytes);
    let header = decoder.read_header_info().map_err(|e| corrupt(format, e))?;
    check(u64::from(header.width), u64::from(header.height))?;
    // Palette and low-bit-depth images expand to 8-bit grey/RGB(A), 16-bit
    // samples keep their high byte.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| corrupt(format, e))?;
    // The png crate (0.18.1) indexes out of bounds expanding a palette whose
    // length is not a multiple of 3 or over 256 entries (found by fuzzing).
    if let Some(palette) = reader.info().palette.as_deref()
        && (palette.len() % 3 != 0 || palette.len() > 768)
    {
        return Err(corrupt(
            format,
            format!("the palette (PLTE) has {} bytes; 3 per entry and at most 256 entries are valid", palette.len()),
        ));
    }
    let (width, height) = (reader.info().width, reader.info().height);
    let channels = reader.output_color_type().0.samples();
    let decoded_len = reader.output_buffer_size().ok_or_else(|| corrupt(format, "the image size overflows"))?;
    let pixels = width as usize * height as usize;
    set_len(buf, decoded_len.max(pixels * 3));
    // For an animated PNG this is the default image, which is what a viewer
    // without APNG support shows.
    reader.next_frame(&mut buf[..decoded_len]).map_err(|e| corrupt(format, e))?;
    // Alpha is dropped, not blended: models trained on RGB photos see the
    // colour channels as stored, whatever the background would have been.
    widen_to_rgb_in_place(buf, pixels, channels);
    buf.truncate(pixels * 3);
    Ok((width, height))
}

/// Sets `buf.len()` without zeroing memory that the decoder overwrites anyway;
/// only growth beyond the current length is zero-filled.
fn set_len(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
}

/// Rewrites `pixels` packed pixels of `channels` samples (1: grey, 2: grey +
/// alpha, 3: RGB, 4: RGBA) as RGB8 at the start of `buf`. Growing formats are
/// rewritten back to front and shrinking ones front to back, so no pixel is
/// overwritten before it is read.
fn widen_to_rgb_in_place(buf: &mut [u8], pixels: usize, channels: usize) {
    match channels {
        1 | 2 => {
            for i in (0..pixels).rev() {
                let g = buf[i * channels];
                buf[i * 3..i * 3 + 3].fill(g);
            }
        }
        4 => {
            for i in 0..pixels {
                buf.copy_within(i * 4..i * 4 + 3, i * 3);
            }
        }
        _ => {}
    }
}

/// libjpeg stores CMYK as Adobe writes it, inverted (255 = no ink), so
/// `R = C * K / 255`, rounded: the same formula as TurboJPEG's own `cmyk_to_rgb`.
fn cmyk_to_rgb_in_place(buf: &mut [u8], pixels: usize) {
    let mul = |a: u8, k: u8| ((2 * u32::from(a) * u32::from(k) + 255) / 510) as u8;
    for i in 0..pixels {
        let [c, m, y, k] = [buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]];
        buf[i * 3..i * 3 + 3].copy_from_slice(&[mul(c, k), mul(m, k), mul(y, k)]);
    }
}

fn corrupt(format: ImageFormat, message: impl fmt::Display) -> ImageError {
    ImageError::Corrupt { format, message: message.to_string() }
}

/// libjpeg's own words, without the crate's "TurboJPEG error: " prefix.
fn jpeg_corrupt(e: turbojpeg::Error) -> ImageError {
    match e {
        turbojpeg::Error::TurboJpegError(message) => corrupt(ImageFormat::Jpeg, message),
        other => corrupt(ImageFormat::Jpeg, other),
    }
}

#[cfg(test)]
mod tests;
