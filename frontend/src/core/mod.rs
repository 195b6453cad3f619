//! The protocol-neutral request core: everything an inference request goes
//! through between an adapter (HTTP today, gRPC next) and the workers. An
//! adapter describes the request ([`Payload`], [`RequestParams`]), hands
//! over its body as a [`BodySource`](crate::body::BodySource), and renders
//! the [`Answer`]; admission, reading, dispatch, deadlines, the request's
//! span, metrics and log line are here, once. No HTTP types in its API.

mod answer;
mod infer;
mod input;
mod job;
mod payload;

pub use answer::Answer;
pub use infer::{Parsed, Request, infer, infer_parsed};
pub use job::RequestParams;
pub use payload::{Headers, Payload};
