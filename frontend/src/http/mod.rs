//! The HTTP adapter (KServe v2 over HTTP, image posts, `/metrics`): the
//! routing table, headers → request core → response, and the listeners.

mod infer;
mod response;
pub mod router;
pub mod serve;
