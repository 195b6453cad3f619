//! Metadata and model configuration as messages: ServerMetadata,
//! ModelMetadata and ModelConfig, each the counterpart of the HTTP JSON
//! `crate::v2` renders (`GET /v2`, `/v2/models/<m>`, `.../config`) and kept
//! to the same content.

use std::collections::HashMap;

use model_repo::{DType, Model, TensorConfig, VersionPolicy};

use super::proto::model_instance_group::Kind;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
use super::proto::{self, DataType};
use crate::v2;

/// Name, version and extensions, from the one list HTTP's `GET /v2` sends:
/// the two protocols implement the same extensions.
pub fn server_metadata() -> proto::ServerMetadataResponse {
    let meta: serde_json::Value =
        serde_json::from_slice(&v2::server_metadata()).expect("v2::server_metadata is JSON; this is a bug");
    let text = |key: &str| meta[key].as_str().unwrap_or_default().to_string();
    proto::ServerMetadataResponse {
        name: text("name"),
        version: text("version"),
        extensions: meta["extensions"]
            .as_array()
            .map(|all| all.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    }
}

/// Shapes as clients send them (-1 for the batch dimension and any
/// variable one); `versions`: every ready version.
pub fn model_metadata(model: &Model, versions: &[u64]) -> proto::ModelMetadataResponse {
    let tensors = |list: &[TensorConfig]| -> Vec<TensorMetadata> {
        list.iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype.name().into(),
                shape: model.config.full_shape(t),
            })
            .collect()
    };
    proto::ModelMetadataResponse {
        name: model.name.clone(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: model.config.platform().into(),
        inputs: tensors(&model.config.inputs),
        outputs: tensors(&model.config.outputs),
    }
}

/// Triton's `ModelConfig` for `model`: what perf_analyzer and tritonclient
/// read (dims without the batch dimension). Beyond HTTP's JSON: the
/// priority levels in `dynamic_batching`, where Triton keeps them. The
/// repository's own config, which HTTP sends under `highserve`, is the
/// JSON of `parameters["highserve"]`.
pub fn model_config(model: &Model) -> proto::ModelConfig {
    let c = &model.config;
    let inputs = c
        .inputs
        .iter()
        .map(|t| proto::ModelInput {
            name: t.name.clone(),
            data_type: data_type(t.datatype) as i32,
            dims: t.dims.clone(),
            ..Default::default()
        })
        .collect();
    let outputs = c
        .outputs
        .iter()
        .map(|t| proto::ModelOutput {
            name: t.name.clone(),
            data_type: data_type(t.datatype) as i32,
            dims: t.dims.clone(),
            ..Default::default()
        })
        .collect();
    let scheduling = c.dynamic_batching.as_ref().map(|d| {
        proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
            preferred_batch_size: d.preferred_batch_size.iter().map(|&n| n as i32).collect(),
            max_queue_delay_microseconds: d.max_queue_delay_microseconds,
            priority_levels: c.priority_levels.into(),
            default_priority_level: c.default_priority_level.unwrap_or(0).into(),
            ..Default::default()
        })
    });
    let highserve = serde_json::to_string(c).expect("a model config serializes; this is a bug");
    proto::ModelConfig {
        name: model.name.clone(),
        platform: c.platform().into(),
        backend: c.backend().into(),
        version_policy: Some(version_policy(&c.version_policy)),
        max_batch_size: c.max_batch_size as i32,
        input: inputs,
        output: outputs,
        scheduling_choice: scheduling,
        instance_group: vec![proto::ModelInstanceGroup {
            name: model.name.clone(),
            kind: Kind::Cpu as i32,
            count: c.instances as i32,
            ..Default::default()
        }],
        parameters: HashMap::from([("highserve".to_string(), proto::ModelParameter { string_value: highserve })]),
        // Every request has exactly one response.
        model_transaction_policy: Some(proto::ModelTransactionPolicy { decoupled: false }),
        response_cache: Some(proto::ModelResponseCache { enable: false }),
        ..Default::default()
    }
}

fn version_policy(p: &VersionPolicy) -> proto::ModelVersionPolicy {
    let choice = match p {
        VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest { num_versions: *num_versions }),
        VersionPolicy::All {} => PolicyChoice::All(All {}),
        VersionPolicy::Specific { versions } => {
            PolicyChoice::Specific(Specific { versions: versions.iter().map(|&v| v as i64).collect() })
        }
    };
    proto::ModelVersionPolicy { policy_choice: Some(choice) }
}

/// Triton's config type of a v2 datatype (BYTES is `TYPE_STRING`): the
/// enum value of the name its JSON config uses.
pub(super) fn data_type(d: DType) -> DataType {
    DataType::from_str_name(&crate::v2::config_type(d)).expect("every v2 datatype has a Triton type; this is a bug")
}
