//! The tensors between a pipeline's CPU steps and its model steps: what a
//! CPU step makes for the next model ([`Item`], in a slot it takes through
//! [`Slots`]), and what a model answers ([`Arrived`]).

use shm::tensor::{self, DType, TensorMeta, TensorSpec};
use shm::{ProcId, Slot, SlotPool};

use crate::failure::Failure;

/// Where a CPU step takes shared-memory slots for one request's tensors.
pub struct Slots<'a> {
    pub(super) pool: &'a SlotPool,
    pub(super) me: ProcId,
    pub(super) request_id: u64,
}

impl Slots<'_> {
    /// The size of the largest slot class: no tensor can be larger.
    pub fn largest(&self) -> usize {
        self.pool.largest()
    }
}

/// Tensors a CPU step made for the next model step: one model request.
pub struct Item {
    pub(super) slot: Slot,
    pub(super) table_len: usize,
    data: std::ops::Range<usize>,
    pub(super) rows: u32,
    /// The step's own number for each row, in row order (OCR: the text
    /// region the row is a crop of), given back with the model's answer.
    pub(super) tags: Vec<usize>,
}

impl Item {
    /// A slot holding one FP32 tensor of `dims` (the first is the rows).
    pub fn new(slots: &Slots, dims: &[i64], tags: Vec<usize>) -> Result<Item, Failure> {
        let spec = TensorSpec::dense(DType::F32, dims).ok_or_else(|| Failure::internal("bad tensor dims"))?;
        let specs = std::slice::from_ref(&spec);
        let mut slot = slots.pool.alloc(tensor::plan(0, specs)?.0, slots.me, slots.request_id)?;
        let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, specs)?;
        Ok(Item { slot, table_len, data: ranges[0].clone(), rows: dims[0] as u32, tags })
    }

    /// The tensor's bytes, for the step to fill.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.slot.as_mut_slice()[self.data.clone()]
    }
}

/// A model request's answer: in its shared-memory slot, or, when it came
/// while the request still waited for other answers of the same step, copied
/// to the heap with its slot given back at once. A request then never holds
/// slots while it waits for its own other answers, which may need those very
/// slots (the recognizer's outputs are about 5.75 times its inputs, and a
/// step sends one request per width bucket).
pub struct Arrived {
    data: Data,
    metas: Vec<TensorMeta>,
}

enum Data {
    Slot(Slot),
    /// The slot's bytes up to the end of the last output, 8-byte aligned.
    Heap(Vec<u64>),
}

impl Arrived {
    pub(super) fn new(slot: Slot, metas: Vec<TensorMeta>, keep_slot: bool) -> Arrived {
        if keep_slot {
            return Arrived { data: Data::Slot(slot), metas };
        }
        let end = metas.iter().map(|m| m.offset + m.len).max().unwrap_or(0).min(slot.capacity());
        let mut words = vec![0u64; end.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..end].copy_from_slice(&slot.as_slice()[..end]);
        Arrived { data: Data::Heap(words), metas }
    }

    /// Output `i` as f32 values (the data is 64-byte aligned in a slot,
    /// 8-byte aligned on the heap).
    pub fn f32s(&self, i: usize) -> Result<(&[i64], &[f32]), Failure> {
        let m = self.metas.get(i).ok_or_else(|| Failure::internal(format!("model output {i} is missing")))?;
        if m.dtype != DType::F32 {
            return Err(Failure::internal(format!("model output {i} is {}, expected FP32", m.dtype)));
        }
        let bytes = match &self.data {
            Data::Slot(slot) => slot.bytes(m.offset, m.len)?,
            Data::Heap(words) => bytemuck::cast_slice::<u64, u8>(words)
                .get(m.offset..m.offset + m.len)
                .ok_or_else(|| Failure::internal(format!("model output {i} lies outside its answer")))?,
        };
        let values = bytemuck::try_cast_slice(bytes).map_err(|e| Failure::internal(format!("output {i}: {e}")))?;
        Ok((&m.dims, values))
    }
}
