//! How a request's bytes are laid out in a slot for the worker that takes
//! it first: images and raw frames for a preproc worker, v2 tensors for an
//! inference worker (or, when they are encoded images, a preproc worker).

use std::ops::Range;

use model_repo::Model;
use shm::desc::FLAG_POSTPROCESS;
use shm::frame::FrameInfo;
use shm::tensor::{self, DType, TensorSpec};
use shm::{Descriptor, Kind, Slot};

use super::answer::Answer;
use super::job::Job;
use super::payload::{Form, Payload, V2Body};
use crate::admission::Permit;
use crate::client_shm::OutputRegion;
use crate::dispatch::Target;
use crate::error::ApiError;
use crate::state::State;
use crate::v2::{InferRequest, InputData, InputTensor};

/// How the body is read.
pub enum Reading {
    /// Straight into a slot (its size is known before reading).
    Slot(ImageLayout),
    /// Into a buffer, then copied into a slot as what it turns out to be.
    Buffer(Buffered),
}

/// What a buffered body is taken as.
pub enum Buffered {
    /// An image whose length was not declared.
    Image,
    V2(V2Body),
}

impl Reading {
    /// Checks what can be checked before reading (the model takes images, a
    /// frame's size) and, for a frame sent without a length, reserves the
    /// size its caps give.
    pub fn of(state: &State, model: &Model, payload: &Payload, permit: &mut Permit) -> Result<Reading, ApiError> {
        Ok(match (payload.form, payload.len) {
            (Form::Image, Some(n)) => Reading::Slot(ImageLayout::image(model, n)?),
            (Form::Image, None) => Reading::Buffer(Buffered::Image),
            (Form::Frame(frame), len) => Reading::Slot(ImageLayout::frame(state, model, frame, len, permit)?),
            (Form::V2(body), _) => Reading::Buffer(Buffered::V2(body)),
        })
    }
}

/// An image or raw frame in a slot as the preproc worker reads it: the BYTES
/// layout (a u32 length, then the bytes), a frame's bytes starting with its
/// `shm::frame` header, which the decoder recognises instead of a JPEG or
/// PNG signature.
pub struct ImageLayout {
    /// Bytes of the body: the encoded image, or the frame's pixels.
    body: usize,
    frame: Option<FrameInfo>,
}

impl ImageLayout {
    /// An encoded image of `n` bytes.
    pub fn image(model: &Model, n: usize) -> Result<ImageLayout, ApiError> {
        check_takes_images(model)?;
        if n == 0 {
            return Err(ApiError::BadRequest("the body is empty; send a JPEG or PNG image".into()));
        }
        Ok(ImageLayout { body: n, frame: None })
    }

    fn frame(
        state: &State,
        model: &Model,
        frame: FrameInfo,
        len: Option<usize>,
        permit: &mut Permit,
    ) -> Result<ImageLayout, ApiError> {
        check_takes_images(model)?;
        let n = frame.format.frame_len(frame.width, frame.height).map_err(ApiError::BadRequest)?;
        let what = format!("a {}x{} {} frame is {n} bytes", frame.width, frame.height, frame.format.name());
        let limit = state.limits.max_body_bytes;
        if n > limit {
            return Err(ApiError::TooLarge(format!(
                "{what}; the body limit is {limit} (config: server.max_body_bytes; NV12 is half the size of RGB)"
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
        Ok(ImageLayout { body: n, frame: Some(frame) })
    }

    fn header_len(&self) -> usize {
        if self.frame.is_some() { shm::frame::HEADER_LEN } else { 0 }
    }

    /// Bytes the slot must hold.
    fn slot_len(&self) -> usize {
        4 + self.header_len() + self.body
    }

    /// Writes what comes before the body; returns where the body goes.
    fn write(&self, slot: &mut Slot) -> Range<usize> {
        let dst = slot.as_mut_slice();
        let header = self.header_len();
        dst[..4].copy_from_slice(&((header + self.body) as u32).to_le_bytes());
        if let Some(frame) = &self.frame {
            dst[4..4 + header].copy_from_slice(&frame.header());
        }
        4 + header..self.slot_len()
    }
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

/// A request in its slot: the descriptor that hands the slot on, which kind
/// of worker takes it, and the v2 request that says how its outputs are
/// rendered (the default for an image post).
pub struct Work {
    job: Job,
    target: Target,
    desc: Descriptor,
    slot: Slot,
    /// Where an image's own bytes go ([`Work::body`]); empty for tensors.
    body: Range<usize>,
    request: InferRequest,
    /// The client regions of the requested outputs, by position.
    regions: Vec<Option<OutputRegion>>,
}

impl Work {
    /// An image (or frame) for a preproc worker: a slot laid out by
    /// `layout`, its bytes still to be written into [`Work::body`].
    pub fn image(state: &State, job: Job, model: &Model, layout: ImageLayout) -> Result<Work, ApiError> {
        let mut slot = job.alloc(state, layout.slot_len())?;
        let flags = if model.config.answers_in_json() { FLAG_POSTPROCESS } else { 0 };
        let desc = job.descriptor(Kind::Images, layout.slot_len(), 1, flags);
        let body = layout.write(&mut slot);
        Ok(Work {
            job,
            target: Target::Preproc,
            desc,
            slot,
            body,
            request: InferRequest::default(),
            regions: Vec::new(),
        })
    }

    /// Where the image's bytes go.
    pub fn body(&mut self) -> &mut [u8] {
        &mut self.slot.as_mut_slice()[self.body.clone()]
    }

    /// A validated v2 request whose tensor data is in `body`.
    pub fn tensors(
        state: &State,
        job: Job,
        model: &Model,
        request: InferRequest,
        body: &[u8],
    ) -> Result<Work, ApiError> {
        let regions = request
            .outputs
            .iter()
            .map(|o| o.region.as_ref().map(|at| state.client_shm.output(at, &o.name)).transpose())
            .collect::<Result<_, _>>()?;
        let image_input = model.config.image_input().map(|(_, t)| t.name.as_str());
        let bytes_image =
            request.inputs.iter().find(|i| Some(i.name.as_str()) == image_input && i.datatype == DType::Bytes);
        let (target, desc, slot) = if let Some(input) = bytes_image {
            // Encoded images: decode and preprocess first; the outputs come back raw.
            let n = input.data.len();
            let rows = input.shape.first().copied().unwrap_or(1).max(1) as u32;
            let mut slot = job.alloc(state, n)?;
            fill(state, input, body, &mut slot.as_mut_slice()[..n])?;
            (Target::Preproc, job.descriptor(Kind::Images, n, rows, 0), slot)
        } else {
            let mut specs = Vec::new();
            let mut sources = Vec::new();
            for c in &model.config.inputs {
                let input = request
                    .inputs
                    .iter()
                    .find(|i| i.name == c.name)
                    .ok_or_else(|| ApiError::BadRequest(format!("input `{}` is missing", c.name)))?;
                specs.push(TensorSpec { dtype: input.datatype, dims: input.shape.clone(), byte_len: input.data.len() });
                sources.push(input);
            }
            let rows =
                if model.config.max_batch_size > 0 { specs[0].dims.first().copied().unwrap_or(1) as u32 } else { 1 };
            let need = tensor::plan(0, &specs)?.0;
            let mut slot = job.alloc(state, need)?;
            let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, &specs)?;
            for (input, range) in sources.iter().zip(ranges) {
                fill(state, input, body, &mut slot.as_mut_slice()[range])?;
            }
            (Target::Gpu, job.descriptor(Kind::Tensors, table_len, rows, 0), slot)
        };
        // The inputs are in the slot now: what held them (a gRPC message's
        // bytes, JSON data) goes before the wait, not after the answer.
        let request = InferRequest { inputs: Vec::new(), ..request };
        Ok(Work { job, target, desc, slot, body: 0..0, request, regions })
    }

    /// Hands the slot to its worker and waits for the answer.
    pub async fn submit(self, state: &State, model: &Model) -> Result<Answer, ApiError> {
        let (desc, slot) = self.job.run(state, self.target, self.desc, self.slot).await?;
        Answer::new(model, desc, slot, self.request, &self.regions)
    }
}

/// Copies `input`'s bytes into `dst`, its place in the slot: the one copy of
/// tensor bytes on this side (~10 µs per 100 KB), from the request body, the
/// gRPC message, or the client's shared-memory region.
fn fill(state: &State, input: &InputTensor, body: &[u8], dst: &mut [u8]) -> Result<(), ApiError> {
    if let InputData::Region(at) = &input.data {
        return state.client_shm.read(at, dst, &input.name);
    }
    let src = input.data.tensor_bytes(body).expect("only a region's bytes are elsewhere; this is a bug");
    dst.copy_from_slice(src);
    Ok(())
}
