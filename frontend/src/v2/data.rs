//! Tensor elements between JSON and the binary layout (little-endian; BYTES
//! as a u32-LE length then the bytes, per element), both directions.

use half::{bf16, f16};
use model_repo::DType;
use serde::ser::{Error as _, Serialize, SerializeSeq, Serializer};
use serde_json::Value;
use shm::tensor::bytes_elements;

use super::V2Error;

/// The leaves of a (possibly nested) JSON `data` array, row-major. A scalar is
/// one element.
pub(super) fn flatten(data: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            leaf => out.push(leaf),
        }
    }
    let mut out = Vec::new();
    walk(data, &mut out);
    out
}

/// Converts JSON elements of input `name` to the binary layout of `dtype`.
pub(super) fn from_json(name: &str, dtype: DType, values: &[&Value]) -> Result<Vec<u8>, V2Error> {
    let mut out = Vec::with_capacity(values.len() * dtype.size().unwrap_or(8));
    let bad = |i: usize, v: &Value, accepted: &str| {
        V2Error::Request(format!("input `{name}`: element {i} is {v}, which is not {dtype}; accepted: {accepted}"))
    };
    // JSON integers arrive as i64 or u64; i128 holds both so one range check
    // per type covers negative, too-large and exactly-fitting values.
    let int = |v: &Value| v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
    macro_rules! ints {
        ($t:ty) => {
            for (i, v) in values.iter().enumerate() {
                let n = int(v)
                    .and_then(|n| <$t>::try_from(n).ok())
                    .ok_or_else(|| bad(i, v, &format!("integers from {} to {}", <$t>::MIN, <$t>::MAX)))?;
                out.extend_from_slice(&n.to_le_bytes());
            }
        };
    }
    // Floats narrower than f64 reject finite values that would become
    // infinite rather than silently sending inf to the model.
    macro_rules! floats {
        ($conv:expr, $range:expr) => {
            for (i, v) in values.iter().enumerate() {
                let x = v.as_f64().ok_or_else(|| bad(i, v, "numbers"))?;
                let y = $conv(x);
                if !y.is_finite() {
                    return Err(bad(i, v, $range));
                }
                out.extend_from_slice(&y.to_le_bytes());
            }
        };
    }
    match dtype {
        DType::Bool => {
            for (i, v) in values.iter().enumerate() {
                let b = v.as_bool().ok_or_else(|| bad(i, v, "true or false"))?;
                out.push(u8::from(b));
            }
        }
        DType::U8 => ints!(u8),
        DType::U16 => ints!(u16),
        DType::U32 => ints!(u32),
        DType::U64 => ints!(u64),
        DType::I8 => ints!(i8),
        DType::I16 => ints!(i16),
        DType::I32 => ints!(i32),
        DType::I64 => ints!(i64),
        DType::F16 => floats!(f16::from_f64, "numbers within ±65504"),
        DType::BF16 => floats!(bf16::from_f64, "numbers within ±3.39e38"),
        DType::F32 => floats!(|x: f64| x as f32, "numbers within ±3.40e38"),
        DType::F64 => floats!(|x: f64| x, "numbers"),
        DType::Bytes => {
            for (i, v) in values.iter().enumerate() {
                let s = v.as_str().ok_or_else(|| bad(i, v, "strings"))?;
                let len = u32::try_from(s.len()).map_err(|_| bad(i, v, "strings under 4 GiB"))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    Ok(out)
}

/// A binary tensor serialized as a flat JSON array. FP16 and BF16 become
/// numbers via f32 (shortest representation that round-trips); BYTES must be
/// UTF-8 (checked by the caller first for a better message).
pub(super) struct JsonData<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
}

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let data = self.data;
        macro_rules! each {
            ($n:literal, $f:expr) => {{
                let mut seq = s.serialize_seq(Some(data.len() / $n))?;
                for c in data.chunks_exact($n) {
                    let c: [u8; $n] = c.try_into().expect("chunks_exact yields whole chunks; this is a bug");
                    seq.serialize_element(&$f(c))?;
                }
                seq.end()
            }};
        }
        match self.dtype {
            DType::Bool => each!(1, |c: [u8; 1]| c[0] != 0),
            DType::U8 => each!(1, u8::from_le_bytes),
            DType::I8 => each!(1, i8::from_le_bytes),
            DType::U16 => each!(2, u16::from_le_bytes),
            DType::I16 => each!(2, i16::from_le_bytes),
            DType::F16 => each!(2, |c| f16::from_le_bytes(c).to_f32()),
            DType::BF16 => each!(2, |c| bf16::from_le_bytes(c).to_f32()),
            DType::U32 => each!(4, u32::from_le_bytes),
            DType::I32 => each!(4, i32::from_le_bytes),
            DType::F32 => each!(4, f32::from_le_bytes),
            DType::U64 => each!(8, u64::from_le_bytes),
            DType::I64 => each!(8, i64::from_le_bytes),
            DType::F64 => each!(8, f64::from_le_bytes),
            DType::Bytes => {
                let elements = bytes_elements(data).map_err(S::Error::custom)?;
                let mut seq = s.serialize_seq(Some(elements.len()))?;
                for e in elements {
                    seq.serialize_element(std::str::from_utf8(e).map_err(S::Error::custom)?)?;
                }
                seq.end()
            }
        }
    }
}
