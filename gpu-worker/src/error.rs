//! The inference worker's one error type: what can stop it starting or
//! running (a bad request is answered to its client, never returned here).

use shm::ShmError;

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("model `{model}`: {source}")]
    Backend { model: String, source: BackendError },
    #[error(transparent)]
    Runtime(BackendError),
    #[error("cannot start a backend thread: {0}")]
    Thread(std::io::Error),
}
