//! What a descriptor from a peer names, checked: the model it is for, and
//! the images of an `Images` payload (the frontend writes them as one BYTES
//! tensor, a u32 little-endian length then the bytes per image, whichever
//! protocol they came in).

use model_repo::{Model, Repository};
use shm::tensor;

use crate::failure::Failure;

/// Model `index` of the repository (a descriptor's `model`).
pub(crate) fn model(repository: &Repository, index: u16) -> Result<&Model, Failure> {
    repository
        .models
        .get(index as usize)
        .ok_or_else(|| Failure::internal(format!("descriptor names model #{index}, which does not exist")))
}

/// Splits a BYTES payload into its `rows` elements.
pub(crate) fn split_bytes(data: &[u8], rows: u32) -> Result<Vec<&[u8]>, Failure> {
    let out = tensor::bytes_elements(data).map_err(|e| Failure::input(format!("BYTES input: {e}")))?;
    if out.len() != rows as usize {
        return Err(Failure::input(format!("expected {rows} images, found {}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_payload(items: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for i in items {
            v.extend_from_slice(&(i.len() as u32).to_le_bytes());
            v.extend_from_slice(i);
        }
        v
    }

    #[test]
    fn bytes_payloads_split_and_are_checked() {
        let p = bytes_payload(&[b"abc", b"", b"de"]);
        assert_eq!(split_bytes(&p, 3).ok().unwrap(), vec![&b"abc"[..], b"", b"de"]);
        assert!(split_bytes(&p, 2).is_err(), "count mismatch");
        assert!(split_bytes(&p[..p.len() - 1], 3).is_err(), "truncated element");
        assert!(split_bytes(&[1, 0], 1).is_err(), "truncated length");
    }
}
