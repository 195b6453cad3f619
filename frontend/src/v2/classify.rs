//! The classification extension: an output requested with
//! `parameters.classification = k` is replaced by its top k classes per batch
//! row, as BYTES elements `"score:index:label"` (`"score:index"` for classes
//! without a label), formatted as Triton formats them.

use half::{bf16, f16};
use model_repo::DType;

use super::{OutputTensor, V2Error, element_count, shape_str};

/// One score as read from the tensor; integers stay integers so they print as
/// Triton prints them (`std::to_string` of the element type).
#[derive(Clone, Copy)]
enum Score {
    Int(i128),
    Float(f64),
}

impl Score {
    fn key(self) -> f64 {
        match self {
            Score::Int(n) => n as f64,
            // NaN sorts last rather than first: it is no one's top class.
            Score::Float(x) if x.is_nan() => f64::NEG_INFINITY,
            Score::Float(x) => x,
        }
    }

    fn text(self) -> String {
        match self {
            Score::Int(n) => n.to_string(),
            // std::to_string(float) is printf("%f"): six decimals, "nan".
            Score::Float(x) if x.is_nan() => "nan".into(),
            Score::Float(x) => format!("{x:.6}"),
        }
    }
}

fn read(dtype: DType, data: &[u8], i: usize) -> Option<Score> {
    let at = |n: usize| data.get(i * n..i * n + n);
    Some(match dtype {
        DType::U8 => Score::Int(at(1)?[0].into()),
        DType::I8 => Score::Int(i8::from_le_bytes(at(1)?.try_into().ok()?).into()),
        DType::U16 => Score::Int(u16::from_le_bytes(at(2)?.try_into().ok()?).into()),
        DType::I16 => Score::Int(i16::from_le_bytes(at(2)?.try_into().ok()?).into()),
        DType::U32 => Score::Int(u32::from_le_bytes(at(4)?.try_into().ok()?).into()),
        DType::I32 => Score::Int(i32::from_le_bytes(at(4)?.try_into().ok()?).into()),
        DType::U64 => Score::Int(u64::from_le_bytes(at(8)?.try_into().ok()?).into()),
        DType::I64 => Score::Int(i64::from_le_bytes(at(8)?.try_into().ok()?).into()),
        DType::F16 => Score::Float(f16::from_le_bytes(at(2)?.try_into().ok()?).to_f64()),
        DType::BF16 => Score::Float(bf16::from_le_bytes(at(2)?.try_into().ok()?).to_f64()),
        DType::F32 => Score::Float(f32::from_le_bytes(at(4)?.try_into().ok()?).into()),
        DType::F64 => Score::Float(f64::from_le_bytes(at(8)?.try_into().ok()?)),
        DType::Bool | DType::Bytes => return None,
    })
}

/// The classification tensor for `out`: its shape (`[batch, k]` when the
/// model batches, else `[k]`, with k capped by the classes per row) and its
/// BYTES data.
pub(super) fn classify(
    out: &OutputTensor<'_>,
    k: u32,
    batched: bool,
    labels: &[String],
) -> Result<(Vec<i64>, Vec<u8>), V2Error> {
    if matches!(out.datatype, DType::Bool | DType::Bytes) {
        return Err(V2Error::Request(format!(
            "output `{}` is {}; classification needs a numeric output",
            out.name, out.datatype
        )));
    }
    let count = element_count(&out.shape).ok_or_else(|| {
        V2Error::Response(format!("output `{}` has shape {}; this is a bug", out.name, shape_str(&out.shape)))
    })?;
    let scores: Vec<Score> = (0..count)
        .map(|i| read(out.datatype, out.data, i))
        .collect::<Option<_>>()
        .ok_or_else(|| V2Error::Response(format!("output `{}` is shorter than its shape; this is a bug", out.name)))?;
    let (rows, row_len) = match &out.shape[..] {
        [first, rest @ ..] if batched => (*first as usize, element_count(rest).unwrap_or(0)),
        _ => (1, count),
    };
    let k = (k as usize).min(row_len);
    let mut data = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(row_len);
    for row in scores.chunks(row_len.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // Stable: equal scores keep index order, so responses are repeatable.
        order.sort_by(|&a, &b| row[b].key().total_cmp(&row[a].key()));
        for &i in &order[..k] {
            let mut s = format!("{}:{i}", row[i].text());
            if let Some(label) = labels.get(i) {
                s.push(':');
                s.push_str(label);
            }
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s.as_bytes());
        }
    }
    let shape = if batched && !out.shape.is_empty() { vec![rows as i64, k as i64] } else { vec![k as i64] };
    Ok((shape, data))
}
