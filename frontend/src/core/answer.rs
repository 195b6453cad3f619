//! What came back for a request, for the adapter to send in its protocol.

use model_repo::Model;
use shm::tensor;
use shm::{Descriptor, Kind, Slot};

use crate::client_shm::OutputRegion;
use crate::error::ApiError;
use crate::v2::{InferRequest, OutputTensor};

#[expect(clippy::large_enum_variant, reason = "made once per request and moved once; a box would allocate")]
pub enum Answer {
    /// A finished JSON body: the preproc worker post-processed the outputs
    /// (labels, text lines).
    Json(Vec<u8>),
    /// The model's output tensors.
    Tensors(Outputs),
}

/// Output tensors in a slot, described by the tensor table at the start of
/// the descriptor's range.
pub struct Outputs {
    desc: Descriptor,
    slot: Slot,
    /// What the client asked for (which outputs, binary or JSON,
    /// classification); the default for an image post.
    pub request: InferRequest,
}

impl Answer {
    /// What came back in `slot` for `request`; outputs the request asked
    /// into a client's shared-memory region are written there now, so
    /// every adapter finds them done.
    pub(super) fn new(
        model: &Model,
        desc: Descriptor,
        slot: Slot,
        request: InferRequest,
        regions: &[Option<OutputRegion>],
    ) -> Result<Answer, ApiError> {
        Ok(match desc.kind() {
            // Only an image post asks for post-processed JSON (no outputs, so
            // no regions).
            Some(Kind::Response) => Answer::Json(slot.bytes(desc.offset as usize, desc.len as usize)?.to_vec()),
            // A model without post-processing answers with its output tensors.
            _ => {
                let outputs = Outputs { desc, slot, request };
                outputs.write_regions(model, regions)?;
                Answer::Tensors(outputs)
            }
        })
    }
}

impl Outputs {
    /// Views of the outputs, named as `model` names them, in its order.
    pub fn tensors<'a>(&'a self, model: &'a Model) -> Result<Vec<OutputTensor<'a>>, ApiError> {
        let metas = tensor::read_table(self.slot.as_slice(), self.desc.offset as usize, self.desc.len as usize)?;
        Ok(metas
            .into_iter()
            .zip(&model.config.outputs)
            .map(|(m, c)| OutputTensor {
                name: &c.name,
                datatype: m.dtype,
                shape: m.dims,
                data: &self.slot.as_slice()[m.offset..m.offset + m.len],
            })
            .collect())
    }

    /// Writes each output asked into a region: the one copy of its bytes,
    /// from the slot into the client's region.
    fn write_regions(&self, model: &Model, regions: &[Option<OutputRegion>]) -> Result<(), ApiError> {
        if regions.iter().all(Option::is_none) {
            return Ok(());
        }
        let tensors = self.tensors(model)?;
        for (asked, region) in self.request.outputs.iter().zip(regions) {
            let (Some(at), Some(region)) = (&asked.region, region) else { continue };
            // validate() checked the name against the model's outputs.
            let t = tensors.iter().find(|t| t.name == asked.name).ok_or_else(|| {
                ApiError::Internal(format!("the model produced no output `{}`; this is a bug", asked.name))
            })?;
            region.write(at, t.data, &asked.name)?;
        }
        Ok(())
    }
}
