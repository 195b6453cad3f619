//! The frontend: the HTTP server (KServe v2 / Open Inference Protocol and
//! image POSTs). It owns admission, request ids, routing results back to the
//! waiting connection and the one error → HTTP status table. It never decodes
//! images or runs models: that work is in the preproc and inference workers.
#![forbid(unsafe_code)]

pub mod v2;
