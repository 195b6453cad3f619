//! The contract between the engine and a pipeline's CPU steps: the trait a
//! step implements, what it sees of its request ([`Ctx`]), and what the last
//! step answers ([`Answer`]). The engine carries a request's state between
//! steps without knowing its type; the steps that share it name it.

use std::any::Any;

use shm::tensor::DType;

use super::tensors::{Arrived, Item, Slots};
use crate::failure::Failure;
use crate::image::Rgb;

/// A CPU step of a pipeline (`step = "..."` in a pipeline config, built by
/// [`super::registry::cpu_step`]): it owns its parameters, and runs on one
/// request at a time in the worker's thread.
pub trait CpuStep: Send + Sync {
    /// Runs the step on `ctx`: takes the image (the first step) or the
    /// last model step's answers, leaves tensors for the next model step in
    /// `ctx.pending`, and the last step returns the answer.
    ///
    /// A step that fails for want of a free shared-memory slot
    /// (`Failure::no_slot`) must have changed nothing that a second run
    /// would do differently, so the engine can run it again once a slot is
    /// free: the work before the allocation is kept in `ctx.state` or only
    /// read from `ctx` (the model's answers), and nothing is changed in place
    /// before every slot is taken. The engine drops `ctx.pending` first.
    fn run(&self, ctx: &mut Ctx, slots: &Slots) -> Result<Option<Answer>, Failure>;
}

/// One request as its CPU steps see it.
pub struct Ctx {
    /// The request's image, decoded by the engine; the first step takes it.
    pub image: Option<Rgb>,
    /// What the steps keep between them.
    pub state: State,
    /// The answers of the last model step, one per item sent, each with its
    /// rows' tags.
    pub outputs: Vec<(Vec<usize>, Arrived)>,
    /// Made by a CPU step for the next model step.
    pub pending: Vec<Item>,
    /// The form the request wants its answer in.
    pub form: Form,
}

impl Ctx {
    pub(super) fn new(image: Rgb, form: Form) -> Ctx {
        Ctx { image: Some(image), state: State::default(), outputs: Vec::new(), pending: Vec::new(), form }
    }
}

/// A request's state, of a type only its steps know; made on first use.
#[derive(Default)]
pub struct State(Option<Box<dyn Any + Send>>);

impl State {
    /// The state as an `S`, made with `S::default()` if none is there yet.
    pub fn get<S: Any + Send + Default>(&mut self) -> Result<&mut S, Failure> {
        self.0.get_or_insert_with(|| Box::new(S::default())).downcast_mut::<S>().ok_or_else(|| {
            Failure::internal(format!(
                "the pipeline's state is not a {}: its steps do not belong together; this is a bug",
                std::any::type_name::<S>()
            ))
        })
    }
}

/// The form of a pipeline's answer, chosen by how the request came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A JSON body: an image post that asked for post-processing.
    Json,
    /// Output tensors: a v2 request.
    Tensors,
}

/// A pipeline's answer, in the form the request wants; the engine writes it.
pub enum Answer {
    /// The JSON body's fields; the engine adds `model_name` and
    /// `model_version`.
    Json(serde_json::Map<String, serde_json::Value>),
    /// The output tensors, in order.
    Tensors(Vec<Output>),
}

/// One output tensor of an answer.
pub struct Output {
    pub dtype: DType,
    pub dims: Vec<i64>,
    /// Its bytes (BYTES: each element's u32 little-endian length, then the
    /// element).
    pub data: Vec<u8>,
}
