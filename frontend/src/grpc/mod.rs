//! The gRPC adapter: KServe v2 / Triton's `inference.GRPCInferenceService`
//! (`proto/grpc_service.proto`) on its own listener (`server.grpc_port`,
//! Triton's 8001), in the HTTP server's runtime, on the same [`State`]. It
//! turns messages into the request core's requests and orders, and their
//! answers and errors into messages and statuses; it owns nothing a
//! request needs beyond its RPC. Inference goes through
//! [`crate::core::infer_parsed`], as HTTP's goes through `core::infer`.

mod config;
mod convert;
mod infer;
mod repository;
mod service;
mod stats;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::State;

/// The tonic the service is built with, for clients of [`proto`] (tests,
/// tools): the generated client only works with this version's types.
pub use tonic;

/// The messages and the service's client and server, generated from
/// `proto/` by `build.rs`. Public so that tests and tools can drive the
/// service with the same definitions.
#[allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
pub mod proto {
    tonic::include_proto!("inference");

    /// The compiled `.proto` files, encoded as a `FileDescriptorSet`.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference");
}

/// Each stream's HTTP/2 receive window: a few large tensors' worth.
const WINDOW: u32 = 4 << 20;
/// The largest HTTP/2 frame the server accepts (the protocol's limit is
/// 16 MiB − 1).
const MAX_FRAME: u32 = 1 << 20;

/// Serves gRPC on `listener` until `drain` carries a deadline, then stops
/// accepting and lets RPCs in flight finish for up to that deadline (the
/// HTTP listener drains alongside, by the same deadline).
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, mut drain: watch::Receiver<Option<Duration>>) {
    let limit = state.limits.max_body_bytes;
    let service = proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(service::Service::new(state))
        // A message over the body limit is refused before it is buffered
        // whole (OUT_OF_RANGE, tonic's message); answers are bounded alike.
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut stopping = drain.clone();
    let stop = async move {
        let _ = stopping.wait_for(Option::is_some).await;
    };
    let server = tonic::transport::Server::builder()
        // HTTP/2's defaults (64 KiB windows, 16 KiB frames) make a client
        // wait for window updates within one 108 KiB tensor (ppocr_cls's) and cut it in
        // seven frames, each copied apart: a request's tensor fits one
        // window and few frames instead.
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(4 * WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop);
    tokio::pin!(server);
    let deadline = tokio::select! {
        result = &mut server => {
            if let Err(e) = result {
                tracing::error!("gRPC server stopped: {e}");
            }
            return;
        }
        deadline = drain.wait_for(Option::is_some) => match deadline {
            Ok(d) => d.unwrap_or_default(),
            // The sender is gone: nothing will ever drain us gracefully.
            Err(_) => Duration::ZERO,
        },
    };
    tracing::info!("gRPC draining: no new connections; waiting up to {deadline:?} for RPCs in flight");
    if tokio::time::timeout(deadline, server).await.is_err() {
        tracing::warn!("gRPC drain deadline passed with RPCs still in flight");
    }
}
