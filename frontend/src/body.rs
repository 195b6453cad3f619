//! Reading request bodies with a size limit and a time limit: straight into a
//! shared-memory slot when the length is known (image posts: the only copy of
//! the bytes on this side), or into a buffer otherwise; and undoing their
//! Content-Encoding. The request core reads through [`BodySource`], so an
//! HTTP body and a message already in memory (what gRPC hands over) read
//! alike.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::error::ApiError;

/// A request body as the core reads it.
pub trait BodySource {
    /// Reads exactly `dst.len()` bytes (the declared length) into `dst`.
    async fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ApiError>;

    /// Reads the whole body into a buffer, refusing more than `limit` bytes;
    /// `hint` (the declared length) sizes the buffer.
    async fn read_all(&mut self, limit: usize, hint: Option<usize>) -> Result<Vec<u8>, ApiError>;
}

/// A body whose every read is bounded in time (`server.body_timeout_ms`):
/// a client that sends one byte a second must not hold its admission and
/// buffers for ever.
pub struct Timed<'b, S> {
    source: &'b mut S,
    limit: Duration,
}

impl<'b, S: BodySource> Timed<'b, S> {
    pub fn new(source: &'b mut S, limit: Duration) -> Timed<'b, S> {
        Timed { source, limit }
    }

    async fn within<T>(limit: Duration, read: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
            Err(ApiError::SlowClient(format!("the body did not arrive within {limit:?} (server.body_timeout_ms)")))
        })
    }
}

impl<S: BodySource> BodySource for Timed<'_, S> {
    async fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ApiError> {
        Self::within(self.limit, self.source.read_exact(dst)).await
    }

    async fn read_all(&mut self, limit: usize, hint: Option<usize>) -> Result<Vec<u8>, ApiError> {
        Self::within(self.limit, self.source.read_all(limit, hint)).await
    }
}

fn read_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("could not read the request body: {e}"))
}

fn longer_than(declared: usize) -> ApiError {
    ApiError::BadRequest(format!("the body has more than the {declared} bytes its headers declare"))
}

fn shorter(at: usize, declared: usize) -> ApiError {
    ApiError::BadRequest(format!("the body ended after {at} of {declared} bytes"))
}

/// An HTTP body: hyper's `Incoming` in the server, `Full<Bytes>` in tests.
impl<B> BodySource for B
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    async fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ApiError> {
        let mut at = 0;
        while let Some(frame) = self.frame().await {
            let frame = frame.map_err(read_error)?;
            if let Ok(data) = frame.into_data() {
                let end = at + data.len();
                if end > dst.len() {
                    return Err(longer_than(dst.len()));
                }
                dst[at..end].copy_from_slice(&data);
                at = end;
            }
        }
        if at != dst.len() {
            return Err(shorter(at, dst.len()));
        }
        Ok(())
    }

    async fn read_all(&mut self, limit: usize, hint: Option<usize>) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(hint.unwrap_or(0).min(limit));
        while let Some(frame) = self.frame().await {
            let frame = frame.map_err(read_error)?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(ApiError::body_too_large(limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }
}

/// A body already in memory, as a gRPC message arrives.
#[cfg_attr(not(test), expect(dead_code, reason = "the gRPC adapter's body (issue 16's next step); tests use it now"))]
pub struct InMemory<'a>(pub &'a [u8]);

impl BodySource for InMemory<'_> {
    async fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ApiError> {
        if self.0.len() > dst.len() {
            return Err(longer_than(dst.len()));
        }
        if self.0.len() < dst.len() {
            return Err(shorter(self.0.len(), dst.len()));
        }
        dst.copy_from_slice(self.0);
        self.0 = &[];
        Ok(())
    }

    async fn read_all(&mut self, limit: usize, _hint: Option<usize>) -> Result<Vec<u8>, ApiError> {
        if self.0.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        Ok(std::mem::take(&mut self.0).to_vec())
    }
}

/// A body's Content-Encoding (tritonclient can compress requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    /// Named, but not one of the above: refused once the body is read.
    Unsupported(String),
}

impl Encoding {
    /// The encoding a Content-Encoding value names (none: identity).
    pub fn parse(value: Option<&str>) -> Encoding {
        match value.map(str::trim) {
            None | Some("identity") => Encoding::Identity,
            Some("gzip") => Encoding::Gzip,
            Some("deflate") => Encoding::Deflate,
            Some(other) => Encoding::Unsupported(other.to_string()),
        }
    }

    /// Undoes the encoding, with the same size limit on the result.
    pub fn decode(&self, body: Vec<u8>, limit: usize) -> Result<Vec<u8>, ApiError> {
        use std::io::Read;
        let mut out = Vec::new();
        let reader: Box<dyn Read> = match self {
            Encoding::Identity => return Ok(body),
            Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(&body[..])),
            Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
            Encoding::Unsupported(other) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Encoding `{other}` is not supported; accepted: gzip, deflate, identity"
                )));
            }
        };
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::BadRequest(format!("could not decompress the body: {e}")))?;
        if out.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn http_and_in_memory_bodies_read_alike() {
        for (declared, want) in [
            (5, Ok(())),
            (3, Err("the body has more than the 3 bytes its headers declare")),
            (9, Err("the body ended after 5 of 9 bytes")),
        ] {
            let mut dst = vec![0; declared];
            let http = run(Full::new(Bytes::from_static(b"hello")).read_exact(&mut dst));
            let mut dst = vec![0; declared];
            let memory = run(InMemory(b"hello").read_exact(&mut dst));
            for got in [http, memory] {
                assert_eq!(got.as_ref().map_err(ApiError::message).copied(), want);
            }
        }
        let too_large = "the body is over the 4-byte limit (config: server.max_body_bytes)";
        assert_eq!(run(Full::new(Bytes::from_static(b"hello")).read_all(4, None)).unwrap_err().message(), too_large);
        assert_eq!(run(InMemory(b"hello").read_all(4, None)).unwrap_err().message(), too_large);
        assert_eq!(run(InMemory(b"hello").read_all(5, None)).unwrap(), b"hello");
    }

    #[test]
    fn encodings_are_undone_or_refused() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"inputs\":[]}").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Encoding::parse(Some(" gzip ")).decode(gz.clone(), 100).unwrap(), b"{\"inputs\":[]}");
        assert_eq!(Encoding::parse(Some("gzip")).decode(gz, 4).unwrap_err().status(), 413);
        assert_eq!(Encoding::parse(None), Encoding::Identity);
        let br = Encoding::parse(Some("br")).decode(vec![1], 100).unwrap_err();
        assert_eq!(br.message(), "Content-Encoding `br` is not supported; accepted: gzip, deflate, identity");
        assert_eq!(br.status(), 415);
    }
}
