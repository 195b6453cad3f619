//! Reading an ONNX file's `metadata_props` without an ONNX runtime: the
//! preproc workers hold no model, yet the OCR pipeline's CTC decoding needs
//! the recognizer's character list, which PaddleOCR models store there.
//!
//! ONNX files are protobuf `ModelProto` messages; `metadata_props` is field 14,
//! a repeated `StringStringEntryProto { key = 1, value = 2 }`. This reads just
//! that, skipping every other field by its wire type.

use std::collections::HashMap;
use std::path::Path;

use crate::RepoError;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// Skips a field of `wire` type; `None` on a malformed message.
    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => None,
        }
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some(())
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn entry(msg: &[u8]) -> Option<(String, String)> {
    let mut r = Reader { buf: msg, pos: 0 };
    let (mut key, mut value) = (String::new(), String::new());
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => key = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 2) => value = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (_, wire) => r.skip(wire)?,
        }
    }
    Some((key, value))
}

/// The metadata key/value pairs of an ONNX model held in memory.
pub fn parse(model: &[u8]) -> Option<HashMap<String, String>> {
    let mut r = Reader { buf: model, pos: 0 };
    let mut out = HashMap::new();
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (14, 2) => {
                let (k, v) = entry(r.bytes()?)?;
                out.insert(k, v);
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(out)
}

/// The metadata of the ONNX file at `path`.
pub fn read(path: &Path) -> Result<HashMap<String, String>, RepoError> {
    let bytes = std::fs::read(path).map_err(|source| RepoError::Io { path: path.display().to_string(), source })?;
    parse(&bytes).ok_or_else(|| RepoError::Parse {
        path: path.display().to_string(),
        message: "not a well-formed ONNX (protobuf) file".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3 | 2) as u8];
        v.push(payload.len() as u8);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn finds_metadata_among_other_fields() {
        let mut model = vec![0x08, 0x07]; // ir_version = 7 (varint field 1)
        model.extend(field(2, b"producer"));
        let mut kv = field(1, b"character");
        kv.extend(field(2, b"a\nb\nc"));
        model.extend(field(14, &kv));
        model.extend([0x1D, 1, 2, 3, 4]); // a fixed32 field 3
        let meta = parse(&model).unwrap();
        assert_eq!(meta["character"], "a\nb\nc");
    }

    #[test]
    fn malformed_input_is_none_not_a_panic() {
        assert!(parse(&[0x72, 0x7f, 0x00]).is_none(), "length beyond the end");
        assert!(parse(&[0xff; 11]).is_none(), "endless varint");
        assert!(parse(&[0x0f]).is_none(), "unknown wire type");
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(n).wrapping_add(31)).collect();
            let _ = parse(&junk);
        }
    }

    #[test]
    fn the_recognizer_carries_its_character_list() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ppocr_rec/1/model.onnx");
        let meta = read(&path).unwrap_or_else(|e| panic!("{e}; run ./scripts/fetch"));
        let chars = meta.get("character").expect("PP-OCR recognizers store `character`");
        assert!(chars.lines().count() > 6000, "{} lines", chars.lines().count());
    }
}
