//! Raw video frames as they cross processes: the pixel layouts a client may
//! post (`Content-Type: video/x-raw; format=NV12; width=1280; height=720`, in
//! GStreamer's caps notation) and the small header the frontend puts in front
//! of the pixels in the request's slot, so the preproc worker (and, on a GPU,
//! the inference worker's preprocessing kernel) knows what it holds. Pure
//! code: no shared-memory access here.

/// The pixel layouts of a raw frame (the GPU kernel's `FMT_*` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PixelFormat {
    /// 8-bit R, G, B per pixel, rows packed.
    Rgb24 = 0,
    /// 8-bit B, G, R per pixel, rows packed (OpenCV's order).
    Bgr24 = 1,
    /// 8-bit Y plane, then an interleaved U/V plane at half resolution;
    /// BT.601 limited range (what hardware video decoders hand out).
    Nv12 = 2,
}

impl PixelFormat {
    /// The names [`PixelFormat::parse`] accepts, for error messages.
    pub const NAMES: &'static str = "RGB (rgb24), BGR (bgr24), NV12";

    /// GStreamer's names (`RGB`, `BGR`, `NV12`) or FFmpeg's (`rgb24`,
    /// `bgr24`, `nv12`), any case.
    pub fn parse(s: &str) -> Option<PixelFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rgb24" | "rgb" => Some(PixelFormat::Rgb24),
            "bgr24" | "bgr" => Some(PixelFormat::Bgr24),
            "nv12" => Some(PixelFormat::Nv12),
            _ => None,
        }
    }

    pub fn from_u8(v: u8) -> Option<PixelFormat> {
        match v {
            0 => Some(PixelFormat::Rgb24),
            1 => Some(PixelFormat::Bgr24),
            2 => Some(PixelFormat::Nv12),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "RGB",
            PixelFormat::Bgr24 => "BGR",
            PixelFormat::Nv12 => "NV12",
        }
    }

    /// Bytes a tightly packed frame of this size takes, or why it cannot exist.
    pub fn frame_len(self, width: u32, height: u32) -> Result<usize, String> {
        if width == 0 || height == 0 {
            return Err(format!("a {width}x{height} frame has no pixels"));
        }
        let (w, h) = (width as usize, height as usize);
        match self {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => Ok(w * h * 3),
            PixelFormat::Nv12 if width % 2 == 1 || height % 2 == 1 => {
                Err(format!("an NV12 frame needs an even width and height; got {width}x{height}"))
            }
            PixelFormat::Nv12 => Ok(w * h + w * h / 2),
        }
    }
}

/// What a frame's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

/// Starts every raw frame in a slot; no JPEG (FF D8) or PNG (89 50) starts
/// like this, so one sniff tells the three apart.
pub const MAGIC: [u8; 8] = *b"HSFRAME1";
/// Magic, format (1 byte), 3 zero bytes, width and height (u32 LE each).
pub const HEADER_LEN: usize = 20;

impl FrameInfo {
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8] = self.format as u8;
        h[12..16].copy_from_slice(&self.width.to_le_bytes());
        h[16..20].copy_from_slice(&self.height.to_le_bytes());
        h
    }
}

pub fn is_frame(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Splits a framed buffer into its header and its pixels, checking that the
/// pixels are exactly as many bytes as the header says.
pub fn parse(bytes: &[u8]) -> Result<(FrameInfo, &[u8]), String> {
    if !is_frame(bytes) || bytes.len() < HEADER_LEN {
        return Err("not a raw frame (no frame header)".into());
    }
    let format = PixelFormat::from_u8(bytes[8]).ok_or_else(|| format!("unknown pixel format code {}", bytes[8]))?;
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let info = FrameInfo { format, width: word(12), height: word(16) };
    let want = format.frame_len(info.width, info.height)?;
    let pixels = &bytes[HEADER_LEN..];
    if pixels.len() != want {
        return Err(format!(
            "a {}x{} {} frame is {want} bytes; the body has {}",
            info.width,
            info.height,
            format.name(),
            pixels.len()
        ));
    }
    Ok((info, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_names_and_their_errors() {
        assert_eq!(PixelFormat::Rgb24.frame_len(4, 2), Ok(24));
        assert_eq!(PixelFormat::Nv12.frame_len(4, 2), Ok(12));
        let e = PixelFormat::Nv12.frame_len(5, 2).expect_err("odd width");
        assert!(e.contains("even"), "{e}");
        assert!(PixelFormat::Bgr24.frame_len(0, 3).is_err());
        assert_eq!(PixelFormat::parse("NV12"), Some(PixelFormat::Nv12));
        assert_eq!(PixelFormat::parse("RGB"), Some(PixelFormat::Rgb24));
        assert_eq!(PixelFormat::parse("bgr24"), Some(PixelFormat::Bgr24));
        assert_eq!(PixelFormat::parse("yuyv"), None);
        for f in [PixelFormat::Rgb24, PixelFormat::Bgr24, PixelFormat::Nv12] {
            assert_eq!(PixelFormat::from_u8(f as u8), Some(f));
            assert_eq!(PixelFormat::parse(f.name()), Some(f));
        }
    }

    #[test]
    fn header_round_trips_and_lengths_are_checked() {
        let info = FrameInfo { format: PixelFormat::Nv12, width: 4, height: 2 };
        let mut buf = info.header().to_vec();
        buf.extend_from_slice(&[7u8; 12]);
        assert!(is_frame(&buf));
        let (got, pixels) = parse(&buf).expect("a whole frame");
        assert_eq!(got, info);
        assert_eq!(pixels, &[7u8; 12]);
        buf.pop();
        let e = parse(&buf).expect_err("one byte short");
        assert!(e.contains("4x2 NV12 frame is 12 bytes; the body has 11"), "{e}");
        assert!(parse(b"\xFF\xD8\xFF\xE0").is_err());
        let mut bad = info.header();
        bad[8] = 9;
        assert!(parse(&bad).expect_err("format 9").contains("unknown pixel format"));
    }
}
