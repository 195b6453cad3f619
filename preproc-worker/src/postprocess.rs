//! The classification job: a model's outputs, sent back here because the
//! request asked for post-processing → the top-k JSON answer for the
//! frontend, written over the outputs in their own slot. The ranking itself
//! is [`crate::classify`].

use std::time::Instant;

use model_repo::{DType, Repository};
use shm::stats::Stage;
use shm::tensor;
use shm::{Descriptor, Kind, Peers, ProcId};

use crate::classify;
use crate::failure::{self, Failure};
use crate::request;

/// Model outputs → the post-processed JSON answer for the frontend.
pub(crate) fn run(peers: &Peers, repository: &Repository, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
    let started = Instant::now();
    let mut slot = peers.pool().adopt(from, peers.me(), d)?;
    let model = request::model(repository, d.model)?;
    let Some(post) = model.config.postprocess.as_ref() else {
        return Err(Failure::internal(format!("model `{}` has no postprocess but its outputs came here", model.name)));
    };
    let (index, _) = model.config.scores_output().ok_or_else(|| Failure::internal("no scores output"))?;
    let metas = tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)?;
    let meta = metas.get(index).ok_or_else(|| Failure::internal("the outputs lack the scores tensor"))?;
    let scores = to_f32(meta.dtype, slot.bytes(meta.offset, meta.len)?)?;
    let rows = (d.rows as usize).max(1);
    if scores.len() % rows != 0 {
        return Err(Failure::internal(format!("{} scores do not split into {rows} rows", scores.len())));
    }
    let per_row: Vec<Vec<classify::Class>> =
        scores.chunks(scores.len() / rows).map(|row| classify::classify(row, post)).collect();
    let body = if per_row.len() == 1 {
        serde_json::json!({ "model_name": model.name, "model_version": model.latest().to_string(), "classes": per_row[0] })
    } else {
        serde_json::json!({ "model_name": model.name, "model_version": model.latest().to_string(), "results": per_row })
    };
    let json = serde_json::to_vec(&body).map_err(|e| Failure::internal(e.to_string()))?;
    // The answer is small; write it over the outputs we no longer need.
    if json.len() > slot.capacity() {
        return Err(Failure::internal("the answer does not fit its slot"));
    }
    slot.as_mut_slice()[..json.len()].copy_from_slice(&json);
    let reply =
        Descriptor { kind: Kind::Response as u8, offset: 0, len: json.len() as u32, sent_ns: shm::now_ns(), ..*d };
    if let Some(h) = shm::stats::stage_histogram(peers.region(), d.model, Stage::Postprocess) {
        h.observe(started.elapsed());
    }
    failure::send(peers, ProcId::FRONTEND, reply, slot)
}

fn to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, Failure> {
    match dtype {
        DType::F32 => Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        DType::F16 => Ok(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        other => Err(Failure::internal(format!("classification needs FP32 or FP16 scores, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_convert_from_fp16_and_fp32() {
        let f32s: Vec<u8> = [0.25f32, 0.75].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(DType::F32, &f32s).ok().unwrap(), vec![0.25, 0.75]);
        let f16s: Vec<u8> = [0.5f32].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        assert_eq!(to_f32(DType::F16, &f16s).ok().unwrap(), vec![0.5]);
        assert!(to_f32(DType::I64, &[0; 8]).is_err());
    }
}
