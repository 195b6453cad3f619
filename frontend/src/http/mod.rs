//! The HTTP adapter (KServe v2 over HTTP, image posts, the repository
//! extension, `/metrics`): the
//! routing table, headers → request core → response, and the listeners.

mod infer;
mod repository;
mod response;
pub mod router;
pub mod serve;
mod shared_memory;
