//! The service's RPCs: each takes the message apart, calls what serves
//! HTTP's route for the same thing, and answers with the message or the
//! status from the one table ([`super::status`]). Errors of every RPC but
//! inference (which logs its own, in its span) are logged here once, as
//! HTTP's router logs its routes'.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use super::repository;
use super::{config, infer, stats, status};
use crate::client_shm;
use crate::control::Order;
use crate::error::ApiError;
use crate::state::State;
use crate::table;

pub struct Service {
    state: Arc<State>,
}

impl Service {
    pub fn new(state: Arc<State>) -> Service {
        Service { state }
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// `e` as `rpc`'s status, logged as HTTP logs a route's error.
fn fail(rpc: &str, e: ApiError) -> Status {
    e.log(format_args!("gRPC {rpc}"));
    status::status(&e)
}

/// An optional string field: empty is absent (proto3 has no null).
fn given(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse { ready: self.state.dispatch.all_ready() }))
    }

    /// Not ready (rather than NOT_FOUND) for a model or version the table
    /// does not have, as Triton answers it: tritonclient's
    /// `is_model_ready` then returns false instead of raising.
    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let r = r.into_inner();
        let t = self.state.table();
        let known = table::find(&t, &r.name, given(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready: known && self.state.dispatch.all_ready() }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(config::server_metadata()))
    }

    async fn model_metadata(&self, r: Request<ModelMetadataRequest>) -> Answer<ModelMetadataResponse> {
        let r = r.into_inner();
        let t = self.state.table();
        let (_, model) = table::find(&t, &r.name, given(&r.version)).map_err(|e| fail("ModelMetadata", e))?;
        Ok(Response::new(config::model_metadata(model, &t.versions_of(&r.name))))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        let r = r.into_inner();
        let t = self.state.table();
        let (_, model) = table::find(&t, &r.name, given(&r.version)).map_err(|e| fail("ModelConfig", e))?;
        Ok(Response::new(ModelConfigResponse { config: Some(config::model_config(model)) }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let budget = infer::budget(r.metadata());
        match infer::infer(&self.state, r.into_inner(), budget).await {
            Ok(resp) => Ok(Response::new(resp)),
            // Logged by the core, in the request's span (or by infer).
            Err(e) => Err(status::status(&e)),
        }
    }

    type ModelStreamInferStream = infer::Answers;

    async fn model_stream_infer(
        &self,
        r: Request<Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        let budget = infer::budget(r.metadata());
        Ok(Response::new(infer::stream(self.state.clone(), r.into_inner(), budget)))
    }

    async fn model_statistics(&self, r: Request<ModelStatisticsRequest>) -> Answer<ModelStatisticsResponse> {
        let r = r.into_inner();
        let stats = stats::model_statistics(&self.state, &r.name, given(&r.version));
        Ok(Response::new(stats.map_err(|e| fail("ModelStatistics", e))?))
    }

    async fn repository_index(&self, r: Request<RepositoryIndexRequest>) -> Answer<RepositoryIndexResponse> {
        let index = repository::index(&self.state, r.into_inner().ready);
        Ok(Response::new(index.map_err(|e| fail("RepositoryIndex", e))?))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        let (metadata, _, r) = r.into_parts();
        repository::order(&self.state, &metadata, &r.model_name, Order::Load, &r.parameters)
            .await
            .map_err(|e| fail("RepositoryModelLoad", e))?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        let (metadata, _, r) = r.into_parts();
        repository::order(&self.state, &metadata, &r.model_name, Order::Unload, &r.parameters)
            .await
            .map_err(|e| fail("RepositoryModelUnload", e))?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        r: Request<SystemSharedMemoryStatusRequest>,
    ) -> Answer<SystemSharedMemoryStatusResponse> {
        let r = r.into_inner();
        let regions = self.state.client_shm.status(given(&r.name)).map_err(|e| fail("SystemSharedMemoryStatus", e))?;
        let regions = regions
            .into_iter()
            .map(|s| {
                let status = system_shared_memory_status_response::RegionStatus {
                    name: s.name.clone(),
                    key: s.key,
                    offset: s.offset as u64,
                    byte_size: s.byte_size as u64,
                };
                (s.name, status)
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        r: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Answer<SystemSharedMemoryRegisterResponse> {
        let r = r.into_inner();
        let size = |what: &str, n: u64| {
            usize::try_from(n).map_err(|_| ApiError::BadRequest(format!("{what} {n} is past any region's end")))
        };
        size("offset", r.offset)
            .and_then(|offset| Ok((offset, size("byte_size", r.byte_size)?)))
            .and_then(|(offset, byte_size)| self.state.client_shm.register(&r.name, &r.key, offset, byte_size))
            .map_err(|e| fail("SystemSharedMemoryRegister", e))?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        r: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<SystemSharedMemoryUnregisterResponse> {
        self.state.client_shm.unregister(given(&r.into_inner().name));
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    /// No CUDA regions: this daemon registers none (docs/api.md).
    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Answer<CudaSharedMemoryStatusResponse> {
        Ok(Response::new(CudaSharedMemoryStatusResponse { regions: HashMap::new() }))
    }

    /// Refused with HTTP's message: no client memory on a GPU is taken.
    async fn cuda_shared_memory_register(
        &self,
        r: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Answer<CudaSharedMemoryRegisterResponse> {
        Err(fail("CudaSharedMemoryRegister", client_shm::cuda_unsupported(&r.into_inner().name)))
    }

    /// Nothing to unregister: as Triton answers an unknown region.
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<CudaSharedMemoryUnregisterResponse> {
        Ok(Response::new(CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Answer<TraceSettingResponse> {
        Err(Status::unimplemented(
            "trace settings are not implemented: highserve has no request tracing to configure; its logs follow \
             RUST_LOG (docs/operations.md)",
        ))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Answer<LogSettingsResponse> {
        Err(Status::unimplemented(
            "log settings are not implemented: the level is set at start by log.level (RUST_LOG overrides it) and \
             the format by --log-format (docs/operations.md)",
        ))
    }
}
