//! The image job: encoded images from the frontend → one input tensor for
//! their model, decoded, resized and normalized straight into a new slot,
//! which goes to an inference worker (for a model decoded on the GPU, the
//! images go as they came, after a header check).

use std::time::{Duration, Instant};

use model_repo::Repository;
use shm::desc::FLAG_POSTPROCESS;
use shm::stats::Stage;
use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Kind, Peers, ProcId, Region};

use crate::contain::contain;
use crate::failure::{self, Failure};
use crate::image::{self, DecodeLimits};
use crate::preprocess::{self, Scratch};
use crate::request;

/// The image job and the buffers it reuses from one request to the next.
pub(crate) struct Tensorize {
    limits: DecodeLimits,
    /// Decode JPEGs at a reduced DCT scale when the model input is small.
    dct_scaling: bool,
    /// The inference workers decode images of models with `decode = "gpu"`.
    gpu_decode: bool,
    scratch: Scratch,
    decoded: Vec<u8>,
}

impl Tensorize {
    pub fn new(limits: DecodeLimits, dct_scaling: bool, gpu_decode: bool) -> Tensorize {
        Tensorize { limits, dct_scaling, gpu_decode, scratch: Scratch::default(), decoded: Vec::new() }
    }

    /// Encoded images from the frontend → one input tensor for the model.
    pub fn run(&mut self, peers: &Peers, repository: &Repository, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
        let me = peers.me();
        let input = peers.pool().take(from, me, d)?;
        let model = request::model(repository, d.model)?;
        let cfg = &model.config;
        let (Some(pre), Some((_, tensor_cfg))) = (cfg.preprocess.as_ref(), cfg.image_input()) else {
            return Err(Failure::input(format!("model `{}` does not take images; send tensors", model.name)));
        };
        let dtype = tensor_cfg.datatype;
        let images = request::split_bytes(input.bytes(d.offset as usize, d.len as usize)?, d.rows)?;
        let postprocess = d.flags & FLAG_POSTPROCESS != 0 && cfg.postprocess.is_some();
        let reply_to = if postprocess { me } else { ProcId::FRONTEND };
        if self.gpu_decode && cfg.decodes_on_gpu() {
            // Only the headers here: JPEGs and raw frames go to the GPU as they
            // came, in their slot; a request with a PNG is done here.
            let mut on_gpu = true;
            for (i, bytes) in images.iter().enumerate() {
                let which = if images.len() > 1 { format!("image {i}: ") } else { String::new() };
                let info = image::probe(bytes, &self.limits).map_err(|e| Failure::input(format!("{which}{e}")))?;
                on_gpu &= info.format != image::ImageFormat::Png;
            }
            if on_gpu {
                let next = Descriptor { kind: Kind::Images as u8, reply_to: reply_to.0, sent_ns: shm::now_ns(), ..*d };
                let gpu = failure::ready_gpu(peers)?;
                return failure::send(peers, gpu, next, input);
            }
        }
        let per_image = preprocess::tensor_len(pre, dtype);
        let dims: Vec<i64> = std::iter::once(d.rows as i64).chain(pre.image_dims()).collect();
        let spec = TensorSpec { dtype, dims, byte_len: per_image * d.rows as usize };
        let mut out = peers.pool().alloc(tensor::plan(0, std::slice::from_ref(&spec))?.0, me, d.request_id)?;
        let (table_len, ranges) = tensor::write_table(out.as_mut_slice(), 0, std::slice::from_ref(&spec))?;
        let data = ranges[0].clone();
        for (i, bytes) in images.iter().enumerate() {
            let which = if images.len() > 1 { format!("image {i}: ") } else { String::new() };
            let dst = &mut out.as_mut_slice()[data.start + i * per_image..data.start + (i + 1) * per_image];
            let (limits, dct, decoded, scratch) =
                (&self.limits, self.dct_scaling, &mut self.decoded, &mut self.scratch);
            let started = Instant::now();
            let (decode_took, preprocess_took) = contain(|| {
                let info = image::probe(bytes, limits).map_err(|e| Failure::input(format!("{which}{e}")))?;
                let scale_to = dct.then(|| preprocess::source_size_needed(pre, info.width, info.height));
                let src = image::pixels(bytes, &info, scale_to, decoded)
                    .map_err(|e| Failure::input(format!("{which}{e}")))?;
                let decoded_at = Instant::now();
                preprocess::preprocess_into(src, pre, dtype, dst, scratch)
                    .map_err(|e| Failure::internal(format!("{which}{e}")))?;
                Ok::<_, Failure>((decoded_at - started, decoded_at.elapsed()))
            })
            .map_err(|panic| Failure::input(format!("{which}the image could not be decoded: {panic}")))??;
            observe(peers.region(), d.model, Stage::Decode, decode_took);
            observe(peers.region(), d.model, Stage::Preprocess, preprocess_took);
        }
        drop(input);
        let next = Descriptor {
            kind: Kind::Tensors as u8,
            offset: 0,
            len: table_len as u32,
            reply_to: reply_to.0,
            sent_ns: shm::now_ns(),
            ..*d
        };
        let gpu = failure::ready_gpu(peers)?;
        failure::send(peers, gpu, next, out)
    }
}

/// Adds a stage's time to the model's histogram in shared memory.
fn observe(region: &Region, model: u16, stage: Stage, took: Duration) {
    if let Some(h) = shm::stats::stage_histogram(region, model, stage) {
        h.observe(took);
    }
}
