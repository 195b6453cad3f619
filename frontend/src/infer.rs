//! `POST /v2/models/<m>[/versions/<v>]/infer`: images as images, raw video
//! frames, KServe v2 JSON and binary-tensor requests, and raw binary bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use model_repo::Model;
use shm::desc::FLAG_POSTPROCESS;
use shm::frame::{FrameInfo, PixelFormat};
use shm::tensor::{self, DType, TensorSpec};
use shm::{Descriptor, Kind, ProcId, Slot};

use crate::admission::Permit;
use crate::body;
use crate::dispatch::{Completion, Target};
use crate::error::ApiError;
use crate::metrics::Track;
use crate::server::State;
use crate::v2::{self, InferRequest};

/// The Triton header that splits a JSON header from binary tensor data.
pub const HEADER_LEN: &str = "inference-header-content-length";

type Resp = Response<Full<Bytes>>;

fn json_response(body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Reading a body, bounded in time: a client that sends one byte a second
/// must not hold its admission and buffers for ever.
async fn timed<T>(state: &State, read: impl std::future::Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(state.body_timeout, read).await.unwrap_or_else(|_| {
        Err(ApiError::SlowClient(format!(
            "the body did not arrive within {:?} (server.body_timeout_ms)",
            state.body_timeout
        )))
    })
}

fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// A request on its way: where its answer will come from and until when.
struct Job {
    id: u64,
    model: u16,
    deadline_ns: u64,
    timeout: Duration,
    priority: u8,
}

impl Job {
    fn new(state: &State, config: &Model, model: u16, timeout_us: Option<u64>, priority: Option<u64>) -> Job {
        // The request's `timeout`, else the model's default, else the server's.
        let timeout = timeout_us
            .or(config.config.default_timeout_microseconds)
            .map(Duration::from_micros)
            .unwrap_or(state.request_timeout);
        let id = state.dispatch.new_id();
        tracing::Span::current().record("request_id", id);
        Job {
            id,
            model,
            deadline_ns: shm::now_ns().saturating_add(timeout.as_nanos() as u64),
            timeout,
            // Triton's convention: 0 is the model's default, 1 the highest.
            priority: priority.map(|p| p.min(255) as u8).unwrap_or(0),
        }
    }

    fn descriptor(&self, kind: Kind, len: usize, rows: u32, flags: u8) -> Descriptor {
        Descriptor {
            request_id: self.id,
            deadline_ns: self.deadline_ns,
            sent_ns: shm::now_ns(),
            offset: 0,
            len: len as u32,
            model: self.model,
            kind: kind as u8,
            rows,
            reply_to: ProcId::FRONTEND.0,
            priority: self.priority,
            flags,
            ..Default::default()
        }
    }

    async fn run(
        &self,
        state: &State,
        target: Target,
        d: Descriptor,
        slot: Slot,
    ) -> Result<(Descriptor, Slot), ApiError> {
        let ticket = state.dispatch.submit(target, d, slot)?;
        // A little grace beyond the deadline: a worker that drops an expired
        // request answers with a timeout error, which is more precise.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), ticket.wait()).await {
            Ok(Completion::Done { desc, slot }) => Ok((desc, slot)),
            Ok(Completion::Failed(e)) => Err(e),
            Err(_) => Err(ApiError::Timeout(format!(
                "the request did not complete within {:?} (parameter `timeout` in microseconds, or server.request_timeout_ms)",
                self.timeout
            ))),
        }
    }
}

pub async fn infer(
    state: &Arc<State>,
    model: &Model,
    index: u16,
    req: hyper::Request<Incoming>,
    track: &Track<'_>,
) -> Result<Resp, ApiError> {
    let mut permit = state.admission.admit(index, &model.name)?;
    let (parts, mut body) = req.into_parts();
    let limit = state.max_body_bytes;
    let len = body::content_length(&parts.headers, limit)?;
    if let Some(n) = len {
        // Refused before a byte of the body is read.
        state.admission.reserve(&mut permit, n)?;
    }
    let full_ctype = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let ctype = full_ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let header_len = match parts.headers.get(HEADER_LEN) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).ok_or_else(|| {
            ApiError::BadRequest("Inference-Header-Content-Length must be a non-negative integer".into())
        })?),
    };
    if ctype.starts_with("image/") {
        if ctype != "image/jpeg" && ctype != "image/png" {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {ctype} is not supported; send image/jpeg or image/png"
            )));
        }
        return image_request(state, model, index, &mut body, len, &mut permit, track).await;
    }
    if ctype == "video/x-raw" {
        let frame = frame_params(full_ctype)?;
        return frame_request(state, model, index, &mut body, (len, frame), &mut permit, track).await;
    }
    let raw = timed(state, body::read_all(&mut body, limit, len)).await?;
    track.received();
    if len.is_none() {
        state.admission.reserve(&mut permit, raw.len())?;
    }
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let raw = body::decode(encoding, raw, limit)?;
    if header_len.is_none() && is_image(&raw) {
        // `curl --data-binary @photo.jpg` without a Content-Type: still an image.
        return image_bytes(state, model, index, &raw).await;
    }
    v2_request(state, model, index, &raw, header_len).await
}

/// An image body read straight into a slot (BYTES layout: length, bytes).
async fn image_request(
    state: &Arc<State>,
    model: &Model,
    index: u16,
    body: &mut Incoming,
    len: Option<usize>,
    permit: &mut Permit,
    track: &Track<'_>,
) -> Result<Resp, ApiError> {
    let Some(n) = len else {
        let raw = timed(state, body::read_all(body, state.max_body_bytes, None)).await?;
        track.received();
        state.admission.reserve(permit, raw.len())?;
        return image_bytes(state, model, index, &raw).await;
    };
    check_takes_images(model)?;
    if n == 0 {
        return Err(ApiError::BadRequest("the body is empty; send a JPEG or PNG image".into()));
    }
    let job = Job::new(state, model, index, None, None);
    let mut slot = alloc(state, 4 + n, job.id)?;
    slot.as_mut_slice()[..4].copy_from_slice(&(n as u32).to_le_bytes());
    timed(state, body::read_exact(body, &mut slot.as_mut_slice()[4..4 + n])).await?;
    track.received();
    finish_image(state, model, &job, slot, 4 + n).await
}

/// The frame a `video/x-raw; format=NV12; width=1280; height=720`
/// Content-Type (GStreamer's caps notation) describes.
fn frame_params(content_type: &str) -> Result<FrameInfo, ApiError> {
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

/// A raw frame read straight into a slot behind its `shm::frame` header (the
/// BYTES layout an image has: length, then the bytes the decoder reads).
async fn frame_request(
    state: &Arc<State>,
    model: &Model,
    index: u16,
    body: &mut Incoming,
    (len, frame): (Option<usize>, FrameInfo),
    permit: &mut Permit,
    track: &Track<'_>,
) -> Result<Resp, ApiError> {
    check_takes_images(model)?;
    let n = frame.format.frame_len(frame.width, frame.height).map_err(ApiError::BadRequest)?;
    let what = format!("a {}x{} {} frame is {n} bytes", frame.width, frame.height, frame.format.name());
    if n > state.max_body_bytes {
        return Err(ApiError::TooLarge(format!(
            "{what}; the body limit is {} (config: server.max_body_bytes; NV12 is half the size of RGB)",
            state.max_body_bytes
        )));
    }
    match len {
        Some(given) if given != n => {
            return Err(ApiError::BadRequest(format!("{what}; the body is {given} (Content-Length)")));
        }
        Some(_) => {}
        // Chunked: the Content-Type gives the size, so it is reserved before
        // reading and the body is read into the slot as with a Content-Length.
        None => state.admission.reserve(permit, n)?,
    }
    let job = Job::new(state, model, index, None, None);
    let total = shm::frame::HEADER_LEN + n;
    let mut slot = alloc(state, 4 + total, job.id)?;
    let dst = slot.as_mut_slice();
    dst[..4].copy_from_slice(&(total as u32).to_le_bytes());
    dst[4..4 + shm::frame::HEADER_LEN].copy_from_slice(&frame.header());
    let pixels = &mut dst[4 + shm::frame::HEADER_LEN..4 + total];
    timed(state, body::read_exact(body, pixels)).await?;
    track.received();
    finish_image(state, model, &job, slot, 4 + total).await
}

async fn image_bytes(state: &Arc<State>, model: &Model, index: u16, raw: &[u8]) -> Result<Resp, ApiError> {
    check_takes_images(model)?;
    if raw.is_empty() {
        return Err(ApiError::BadRequest("the body is empty; send a JPEG or PNG image".into()));
    }
    let job = Job::new(state, model, index, None, None);
    let mut slot = alloc(state, 4 + raw.len(), job.id)?;
    let dst = slot.as_mut_slice();
    dst[..4].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    dst[4..4 + raw.len()].copy_from_slice(raw);
    finish_image(state, model, &job, slot, 4 + raw.len()).await
}

/// A slot for `len` bytes of request data: 413 if no slot class could ever
/// hold it, 503 if all that could are busy.
fn alloc(state: &State, len: usize, id: u64) -> Result<Slot, ApiError> {
    let largest = state.dispatch.pool.largest();
    if len > largest {
        return Err(ApiError::TooLarge(format!(
            "the request needs {len} bytes of shared memory; the largest slot holds {largest} (config: shm.slots)"
        )));
    }
    Ok(state.dispatch.pool.alloc(len, ProcId::FRONTEND, id)?)
}

fn check_takes_images(model: &Model) -> Result<(), ApiError> {
    if model.config.image_input().is_none() {
        return Err(ApiError::BadRequest(format!(
            "model `{}` has no image preprocessing; send a KServe v2 JSON or binary tensor request",
            model.name
        )));
    }
    Ok(())
}

async fn finish_image(state: &Arc<State>, model: &Model, job: &Job, slot: Slot, len: usize) -> Result<Resp, ApiError> {
    let json = model.config.answers_in_json();
    let d = job.descriptor(Kind::Images, len, 1, if json { FLAG_POSTPROCESS } else { 0 });
    let (desc, slot) = job.run(state, Target::Preproc, d, slot).await?;
    match desc.kind() {
        Some(Kind::Response) => Ok(json_response(slot.bytes(desc.offset as usize, desc.len as usize)?.to_vec())),
        // A model without post-processing answers with its output tensors.
        _ => render_outputs(model, &desc, &slot, &InferRequest::default()),
    }
}

async fn v2_request(
    state: &Arc<State>,
    model: &Model,
    index: u16,
    raw: &[u8],
    header_len: Option<usize>,
) -> Result<Resp, ApiError> {
    let req = match header_len {
        Some(0) => v2::parse_raw(raw, model)?,
        h => v2::parse_infer(raw, h)?,
    };
    v2::validate(&req, model)?;
    let job = Job::new(state, model, index, req.timeout_us, req.priority);
    let image_input = model.config.image_input().map(|(_, t)| t.name.as_str());
    let bytes_image = req.inputs.iter().find(|i| Some(i.name.as_str()) == image_input && i.datatype == DType::Bytes);
    let (desc, slot) = if let Some(input) = bytes_image {
        // Encoded images: decode and preprocess first; the outputs come back raw.
        let payload = input.data.tensor_bytes(raw);
        let rows = input.shape.first().copied().unwrap_or(1).max(1) as u32;
        let mut slot = alloc(state, payload.len(), job.id)?;
        slot.as_mut_slice()[..payload.len()].copy_from_slice(payload);
        let d = job.descriptor(Kind::Images, payload.len(), rows, 0);
        job.run(state, Target::Preproc, d, slot).await?
    } else {
        let mut specs = Vec::new();
        let mut sources = Vec::new();
        for c in &model.config.inputs {
            let input = req
                .inputs
                .iter()
                .find(|i| i.name == c.name)
                .ok_or_else(|| ApiError::BadRequest(format!("input `{}` is missing", c.name)))?;
            let bytes = input.data.tensor_bytes(raw);
            specs.push(TensorSpec { dtype: input.datatype, dims: input.shape.clone(), byte_len: bytes.len() });
            sources.push(bytes);
        }
        let rows = if model.config.max_batch_size > 0 { specs[0].dims.first().copied().unwrap_or(1) as u32 } else { 1 };
        let need = tensor::plan(0, &specs)?.0;
        let mut slot = alloc(state, need, job.id)?;
        let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, &specs)?;
        for (src, range) in sources.iter().zip(ranges) {
            // The one copy of tensor bytes on this side: from the request body
            // into shared memory (~10 µs per 100 KB).
            slot.as_mut_slice()[range].copy_from_slice(src);
        }
        let d = job.descriptor(Kind::Tensors, table_len, rows, 0);
        job.run(state, Target::Gpu, d, slot).await?
    };
    render_outputs(model, &desc, &slot, &req)
}

/// Renders the output tensors in `slot` as a v2 response.
fn render_outputs(model: &Model, desc: &Descriptor, slot: &Slot, req: &InferRequest) -> Result<Resp, ApiError> {
    let metas = tensor::read_table(slot.as_slice(), desc.offset as usize, desc.len as usize)?;
    let outputs: Vec<v2::OutputTensor<'_>> = metas
        .iter()
        .zip(&model.config.outputs)
        .map(|(m, c)| v2::OutputTensor {
            name: &c.name,
            datatype: m.dtype,
            shape: m.dims.clone(),
            data: &slot.as_slice()[m.offset..m.offset + m.len],
        })
        .collect();
    let response = v2::InferResponse { model, version: model.latest(), id: req.id.as_deref(), outputs: &outputs };
    let rendered = v2::render_infer(&response, req)?;
    let mut resp = Response::new(Full::new(Bytes::from(rendered.body)));
    let h = resp.headers_mut();
    match rendered.header_len {
        Some(n) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LEN, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
