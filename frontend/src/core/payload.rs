//! What the client sent, described before a byte of the body is read:
//! parsed from header values (strings), so the description is pure and an
//! adapter only has to hand the values over.

use model_repo::Model;
use shm::frame::{FrameInfo, PixelFormat};

use crate::body::Encoding;
use crate::error::ApiError;
use crate::v2::{self, InferRequest};

/// The header values a payload is described by, as sent (absent: `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// Triton's `Inference-Header-Content-Length`.
    pub inference_header_len: Option<&'a str>,
}

/// What the body is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Its length, when the client declared it.
    pub len: Option<usize>,
    pub form: Form,
    /// Undone for v2 bodies once read (images are taken as sent).
    pub encoding: Encoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `image/jpeg` or `image/png`.
    Image,
    /// `video/x-raw; format=NV12; width=1280; height=720`.
    Frame(FrameInfo),
    /// A KServe v2 inference request (any other Content-Type, or none).
    V2(V2Body),
}

/// How a v2 request's body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2Body {
    /// All JSON. A body that starts like a JPEG or PNG file is taken as an
    /// image instead: `curl --data-binary @photo.jpg` sends no Content-Type.
    Json,
    /// A JSON header of `header_len` bytes, then binary tensors
    /// (`Inference-Header-Content-Length: n`, n > 0).
    Binary { header_len: usize },
    /// The data of the model's only input (`Inference-Header-Content-Length: 0`).
    Raw,
}

impl Payload {
    pub fn parse(h: &Headers<'_>) -> Result<Payload, ApiError> {
        let len = match h.content_length {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ApiError::BadRequest("Content-Length is not a number".into()))?),
        };
        let header_len = match h.inference_header_len {
            None => None,
            Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
                ApiError::BadRequest("Inference-Header-Content-Length must be a non-negative integer".into())
            })?),
        };
        let full_type = h.content_type.unwrap_or_default();
        let media = full_type.split(';').next().unwrap_or("").trim();
        let form = if media.get(..6).is_some_and(|t| t.eq_ignore_ascii_case("image/")) {
            if !media.eq_ignore_ascii_case("image/jpeg") && !media.eq_ignore_ascii_case("image/png") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Type {} is not supported; send image/jpeg or image/png",
                    media.to_ascii_lowercase()
                )));
            }
            Form::Image
        } else if media.eq_ignore_ascii_case("video/x-raw") {
            Form::Frame(frame_info(full_type)?)
        } else {
            Form::V2(match header_len {
                None => V2Body::Json,
                Some(0) => V2Body::Raw,
                Some(header_len) => V2Body::Binary { header_len },
            })
        };
        Ok(Payload { len, form, encoding: Encoding::parse(h.content_encoding) })
    }
}

impl V2Body {
    /// The request in `body` (already decoded), or `None` for a JSON body
    /// that is an image.
    pub fn parse(self, body: &[u8], model: &Model) -> Result<Option<InferRequest>, ApiError> {
        Ok(Some(match self {
            V2Body::Json if is_image(body) => return Ok(None),
            V2Body::Json => v2::parse_infer(body, None)?,
            V2Body::Binary { header_len } => v2::parse_infer(body, Some(header_len))?,
            V2Body::Raw => v2::parse_raw(body, model)?,
        }))
    }
}

fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// The frame a `video/x-raw; format=NV12; width=1280; height=720`
/// Content-Type (GStreamer's caps notation) describes.
fn frame_info(content_type: &str) -> Result<FrameInfo, ApiError> {
    const USAGE: &str = "send `Content-Type: video/x-raw; format=F; width=W; height=H` with F one of";
    let mut format = None;
    let (mut width, mut height) = (None, None);
    for param in content_type.split(';').skip(1) {
        let Some((key, value)) = param.split_once('=') else { continue };
        let value = value.trim().trim_matches('"');
        let number = |what: &str| {
            value.parse::<u32>().map_err(|_| {
                ApiError::BadRequest(format!("video/x-raw {what}={value:?} is not a whole number of pixels"))
            })
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "format" => {
                format = Some(PixelFormat::parse(value).ok_or_else(|| {
                    ApiError::UnsupportedMediaType(format!(
                        "raw frame format {value:?} is not supported; {USAGE} {}",
                        PixelFormat::NAMES
                    ))
                })?)
            }
            "width" => width = Some(number("width")?),
            "height" => height = Some(number("height")?),
            _ => {}
        }
    }
    match (format, width, height) {
        (Some(format), Some(width), Some(height)) => Ok(FrameInfo { format, width, height }),
        _ => Err(ApiError::BadRequest(format!(
            "a raw frame needs its format, width and height; {USAGE} {} (got `{content_type}`)",
            PixelFormat::NAMES
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(content_type: Option<&str>, extra: Headers<'static>) -> Result<Payload, ApiError> {
        Payload::parse(&Headers { content_type, ..extra })
    }

    fn form(content_type: &str) -> Result<Form, String> {
        parse(Some(content_type), Headers::default()).map(|p| p.form).map_err(|e| e.message().to_string())
    }

    #[test]
    fn images_are_jpeg_or_png_with_their_declared_length() {
        let p = parse(Some("image/jpeg"), Headers { content_length: Some("1234"), ..Headers::default() }).unwrap();
        assert_eq!(p, Payload { len: Some(1234), form: Form::Image, encoding: Encoding::Identity });
        assert_eq!(form("Image/PNG"), Ok(Form::Image));
        assert_eq!(parse(Some("image/png"), Headers::default()).unwrap().len, None, "chunked");
        let gif = parse(Some("Image/GIF; q=1"), Headers::default()).unwrap_err();
        assert_eq!(gif.message(), "Content-Type image/gif is not supported; send image/jpeg or image/png");
        assert_eq!(gif.status(), 415);
    }

    #[test]
    fn raw_frames_are_described_by_their_caps() {
        let nv12 = FrameInfo { format: PixelFormat::Nv12, width: 1280, height: 720 };
        assert_eq!(form("video/x-raw; format=NV12; width=1280; height=720"), Ok(Form::Frame(nv12)));
        assert_eq!(form("video/x-raw;format=\"NV12\";WIDTH=1280;height=720;framerate=30/1"), Ok(Form::Frame(nv12)));
        let names = PixelFormat::NAMES;
        let usage = "send `Content-Type: video/x-raw; format=F; width=W; height=H` with F one of";
        assert_eq!(
            form("video/x-raw; format=YUYV; width=2; height=2"),
            Err(format!("raw frame format \"YUYV\" is not supported; {usage} {names}"))
        );
        assert_eq!(
            form("video/x-raw; format=RGB; width=12.5; height=2"),
            Err("video/x-raw width=\"12.5\" is not a whole number of pixels".into())
        );
        assert_eq!(
            form("video/x-raw; format=RGB; width=2; height=-2"),
            Err("video/x-raw height=\"-2\" is not a whole number of pixels".into())
        );
        assert_eq!(
            form("video/x-raw; format=RGB; width=2"),
            Err(format!(
                "a raw frame needs its format, width and height; {usage} {names} (got `video/x-raw; format=RGB; width=2`)"
            ))
        );
        let unsupported = parse(Some("video/x-raw; format=YUYV; width=2; height=2"), Headers::default());
        assert_eq!(unsupported.unwrap_err().status(), 415);
    }

    #[test]
    fn v2_bodies_follow_the_inference_header_length() {
        let with = |n: &'static str| Headers { inference_header_len: Some(n), ..Headers::default() };
        assert_eq!(form("application/json"), Ok(Form::V2(V2Body::Json)));
        assert_eq!(parse(None, Headers::default()).unwrap().form, Form::V2(V2Body::Json));
        assert_eq!(parse(None, with(" 470 ")).unwrap().form, Form::V2(V2Body::Binary { header_len: 470 }));
        assert_eq!(parse(Some("application/octet-stream"), with("0")).unwrap().form, Form::V2(V2Body::Raw));
        let bad = parse(None, with("-1")).unwrap_err();
        assert_eq!(bad.message(), "Inference-Header-Content-Length must be a non-negative integer");
        // Checked whatever the body is, as before the body is looked at.
        assert_eq!(parse(Some("image/jpeg"), with("x")).unwrap_err().status(), 400);
    }

    #[test]
    fn content_length_and_encoding_are_read_as_given() {
        let bad = parse(None, Headers { content_length: Some("12kB"), ..Headers::default() }).unwrap_err();
        assert_eq!((bad.status().as_u16(), bad.message()), (400, "Content-Length is not a number"));
        let gz = parse(None, Headers { content_encoding: Some("gzip"), ..Headers::default() }).unwrap();
        assert_eq!(gz.encoding, Encoding::Gzip);
        // An unknown encoding is refused once the body is read, as before.
        let br = parse(None, Headers { content_encoding: Some("br"), ..Headers::default() }).unwrap();
        assert_eq!(br.encoding, Encoding::Unsupported("br".into()));
    }

    #[test]
    fn a_json_body_that_is_an_image_is_taken_as_one() {
        let model = crate::tests::model("m", crate::tests::ADD);
        assert_eq!(V2Body::Json.parse(b"\xFF\xD8\xFF\xE0 jpeg", &model).unwrap(), None);
        assert_eq!(V2Body::Json.parse(b"\x89PNG\r\n\x1a\n png", &model).unwrap(), None);
        assert!(V2Body::Json.parse(b"{\"inputs\": []}", &model).is_err(), "parsed as JSON");
        let raw = V2Body::Raw.parse(&[0; 8], &model).unwrap().unwrap();
        assert_eq!(raw.inputs[0].name, "x");
        assert!(V2Body::Binary { header_len: 3 }.parse(b"{}", &model).is_err(), "header longer than the body");
    }
}
