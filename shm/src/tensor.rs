//! Tensors stored in a slot: a small table (header + one entry per tensor)
//! followed by each tensor's bytes, 64-byte aligned. Offsets in the table are
//! relative to the start of the slot, so the table means the same thing in
//! every process. Reading a table validates every field: a corrupt table from
//! a buggy peer is an error, never an out-of-bounds access.

use bytemuck::{Pod, Zeroable};

use crate::ShmError;

/// Tensor element types, numbered as in the KServe v2 protocol's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    Bool = 1,
    U8 = 2,
    U16 = 3,
    U32 = 4,
    U64 = 5,
    I8 = 6,
    I16 = 7,
    I32 = 8,
    I64 = 9,
    F16 = 10,
    F32 = 11,
    F64 = 12,
    /// Variable-length elements: u32 little-endian length, then the bytes.
    Bytes = 13,
    BF16 = 14,
}

impl DType {
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bytes,
        DType::BF16,
    ];

    pub fn from_u8(v: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u8 == v)
    }

    /// The KServe v2 datatype name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
            DType::BF16 => "BF16",
        }
    }

    pub fn parse(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element; `None` for BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;
/// Most tensors one table may hold.
pub const MAX_TENSORS: usize = 16;
const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"TNSR");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TableHeader {
    magic: u32,
    count: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Entry {
    dtype: u32,
    ndim: u32,
    dims: [i64; MAX_DIMS],
    data_offset: u64,
    data_len: u64,
    _pad: u64,
}

const HEADER: usize = std::mem::size_of::<TableHeader>();
const ENTRY: usize = std::mem::size_of::<Entry>();
const _: () = assert!(ENTRY == 96);

/// What a writer declares for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub dtype: DType,
    pub dims: Vec<i64>,
    /// Bytes of data: the element count times the element size, except for
    /// BYTES tensors.
    pub byte_len: usize,
}

impl TensorSpec {
    /// A fixed-size tensor; `None` for BYTES or a negative dimension.
    pub fn dense(dtype: DType, dims: &[i64]) -> Option<TensorSpec> {
        let n = element_count(dims)?;
        Some(TensorSpec { dtype, dims: dims.to_vec(), byte_len: n.checked_mul(dtype.size()?)? })
    }
}

/// A tensor found in a slot: its type, shape, and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: DType,
    pub dims: Vec<i64>,
    /// Offset of the data from the start of the slot.
    pub offset: usize,
    pub len: usize,
}

/// The elements of a BYTES tensor (each a u32 little-endian length, then
/// its bytes), or a message saying where the layout breaks (a length running
/// past the data).
pub fn bytes_elements(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let at = data.len() - rest.len();
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "element {} at byte {at}: {} bytes left, too few for its 4-byte length",
                out.len(),
                rest.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(format!("element {} at byte {at} says {len} bytes but only {} remain", out.len(), tail.len()));
        }
        let (element, tail) = tail.split_at(len);
        out.push(element);
        rest = tail;
    }
    Ok(out)
}

/// Product of `dims`, or `None` if one is negative or it overflows.
pub fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

fn align64(v: usize) -> usize {
    v.div_ceil(64) * 64
}

/// Where a table for `specs` starting at `at` puts each tensor's data, and the
/// total bytes from `at` to the end of the last tensor.
pub fn plan(at: usize, specs: &[TensorSpec]) -> Result<(usize, Vec<std::ops::Range<usize>>), ShmError> {
    if specs.len() > MAX_TENSORS {
        return Err(ShmError::BadTable(format!("{} tensors; at most {MAX_TENSORS}", specs.len())));
    }
    let mut off = align64(at + HEADER + specs.len() * ENTRY);
    let mut ranges = Vec::with_capacity(specs.len());
    for s in specs {
        if s.dims.len() > MAX_DIMS {
            return Err(ShmError::BadTable(format!("{} dimensions; at most {MAX_DIMS}", s.dims.len())));
        }
        ranges.push(off..off + s.byte_len);
        off = align64(off + s.byte_len);
    }
    let end = ranges.last().map_or(off, |r| r.end);
    Ok((end - at, ranges))
}

/// Writes the table for `specs` at `at` in `slot`, with each tensor's data
/// placed after it (see [`plan`]). Returns the table's length (the
/// descriptor's `len`) and the data ranges for the caller to fill.
pub fn write_table(
    slot: &mut [u8],
    at: usize,
    specs: &[TensorSpec],
) -> Result<(usize, Vec<std::ops::Range<usize>>), ShmError> {
    let (len, ranges) = plan(at, specs)?;
    if at + len > slot.len() {
        return Err(ShmError::BadTable(format!("{len} bytes of tensors do not fit a slot of {}", slot.len())));
    }
    let offsets: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    let table = write_table_for(slot, at, specs, &offsets)?;
    Ok((table, ranges))
}

/// Reads and validates the table at `at` (the descriptor's payload,
/// `len` bytes). Tensor data may lie anywhere in the slot outside the table:
/// the frontend points entries at binary tensors where the request body put
/// them instead of copying them.
pub fn read_table(slot: &[u8], at: usize, len: usize) -> Result<Vec<TensorMeta>, ShmError> {
    let bad = |m: String| Err(ShmError::BadTable(m));
    match at.checked_add(len) {
        Some(e) if e <= slot.len() => {}
        _ => return bad(format!("payload {at}+{len} is outside the slot of {}", slot.len())),
    };
    if len < HEADER {
        return bad(format!("payload of {len} bytes is too short for a table"));
    }
    let header: TableHeader = bytemuck::pod_read_unaligned(&slot[at..at + HEADER]);
    if header.magic != TABLE_MAGIC {
        return bad(format!("bad magic {:#x}", header.magic));
    }
    let count = header.count as usize;
    if count > MAX_TENSORS || HEADER + count * ENTRY > len {
        return bad(format!("{count} tensors do not fit a {len}-byte payload"));
    }
    let table = at..at + HEADER + count * ENTRY;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let p = at + HEADER + i * ENTRY;
        let e: Entry = bytemuck::pod_read_unaligned(&slot[p..p + ENTRY]);
        let dtype = match u8::try_from(e.dtype).ok().and_then(DType::from_u8) {
            Some(d) => d,
            None => return bad(format!("tensor {i} has unknown type code {}", e.dtype)),
        };
        let ndim = e.ndim as usize;
        if ndim > MAX_DIMS {
            return bad(format!("tensor {i} has {ndim} dimensions"));
        }
        let dims = e.dims[..ndim].to_vec();
        let (start, dlen) = (e.data_offset, e.data_len);
        let end = start.checked_add(dlen).filter(|&x| x <= slot.len() as u64);
        let Some(end) = end else {
            return bad(format!("tensor {i} data {start}+{dlen} is outside the slot of {}", slot.len()));
        };
        let (start, end) = (start as usize, end as usize);
        if dlen > 0 && start < table.end && table.start < end {
            return bad(format!("tensor {i} data {start}..{end} overlaps the table {table:?}"));
        }
        let dlen = dlen as usize;
        match (element_count(&dims), dtype.size()) {
            (None, _) => return bad(format!("tensor {i} has a negative or huge shape {dims:?}")),
            (Some(n), Some(sz)) if n.checked_mul(sz) != Some(dlen) => {
                return bad(format!("tensor {i} of {dtype} {dims:?} needs {} bytes, has {dlen}", n * sz));
            }
            _ => {}
        }
        out.push(TensorMeta { dtype, dims, offset: start, len: dlen });
    }
    Ok(out)
}

/// Writes a table at `at` for tensors whose data already sits elsewhere in
/// the slot (`specs[i]` at `offsets[i]`); returns the table's length.
pub fn write_table_for(slot: &mut [u8], at: usize, specs: &[TensorSpec], offsets: &[usize]) -> Result<usize, ShmError> {
    if specs.len() > MAX_TENSORS || specs.len() != offsets.len() {
        return Err(ShmError::BadTable(format!("{} tensors; at most {MAX_TENSORS}", specs.len())));
    }
    let len = HEADER + specs.len() * ENTRY;
    if at + len > slot.len() {
        return Err(ShmError::BadTable(format!("a {len}-byte table does not fit at {at} in a slot of {}", slot.len())));
    }
    let header = TableHeader { magic: TABLE_MAGIC, count: specs.len() as u32 };
    slot[at..at + HEADER].copy_from_slice(bytemuck::bytes_of(&header));
    for (i, (s, &off)) in specs.iter().zip(offsets).enumerate() {
        if s.dims.len() > MAX_DIMS {
            return Err(ShmError::BadTable(format!("{} dimensions; at most {MAX_DIMS}", s.dims.len())));
        }
        let mut e = Entry::zeroed();
        e.dtype = s.dtype as u32;
        e.ndim = s.dims.len() as u32;
        e.dims[..s.dims.len()].copy_from_slice(&s.dims);
        e.data_offset = off as u64;
        e.data_len = s.byte_len as u64;
        let p = at + HEADER + i * ENTRY;
        slot[p..p + ENTRY].copy_from_slice(bytemuck::bytes_of(&e));
    }
    Ok(len)
}

/// Bytes of a table with `n` entries.
pub fn table_len(n: usize) -> usize {
    HEADER + n * ENTRY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut slot = vec![0u8; 4096];
        let specs = [
            TensorSpec::dense(DType::F32, &[2, 3]).unwrap(),
            TensorSpec { dtype: DType::Bytes, dims: vec![1], byte_len: 9 },
        ];
        let (len, ranges) = write_table(&mut slot, 128, &specs).unwrap();
        assert_eq!(len, table_len(2));
        assert_eq!(ranges[0].start % 64, 0);
        assert_eq!(ranges[0].len(), 24);
        slot[ranges[1].clone()].copy_from_slice(b"\x05\0\0\0hello");
        let got = read_table(&slot, 128, len).unwrap();
        assert_eq!(got[0].dims, vec![2, 3]);
        assert_eq!(got[1].dtype, DType::Bytes);
        assert_eq!(&slot[got[1].offset..got[1].offset + got[1].len], b"\x05\0\0\0hello");
    }

    #[test]
    fn corrupt_tables_are_errors() {
        let mut slot = vec![0u8; 1024];
        let specs = [TensorSpec::dense(DType::F32, &[4]).unwrap()];
        let (len, ranges) = write_table(&mut slot, 0, &specs).unwrap();
        assert!(read_table(&slot, 0, len).is_ok());
        assert!(read_table(&slot, 0, len - 1).is_err(), "table cut short");
        assert!(read_table(&slot, 1000, 100).is_err(), "payload outside the slot");
        assert!(read_table(&slot[..ranges[0].end - 1], 0, len).is_err(), "data runs past the slot");
        let mut overlap = slot.clone();
        write_table_for(&mut overlap, 0, &specs, &[8]).unwrap();
        assert!(read_table(&overlap, 0, len).is_err(), "data overlapping the table");
        let mut bad = slot.clone();
        bad[HEADER + 8..HEADER + 16].copy_from_slice(&(-1i64).to_le_bytes());
        assert!(read_table(&bad, 0, len).is_err(), "negative dimension");
        let mut bad = slot.clone();
        bad[HEADER] = 200;
        assert!(read_table(&bad, 0, len).is_err(), "unknown dtype");
        let mut bad = slot.clone();
        bad[4] = 255;
        assert!(read_table(&bad, 0, len).is_err(), "absurd count");
        // Every single-byte corruption of the table is either caught or harmless.
        for i in 0..HEADER + ENTRY {
            let mut b = slot.clone();
            b[i] ^= 0xA5;
            if let Ok(t) = read_table(&b, 0, len) {
                assert!(t.iter().all(|m| m.offset + m.len <= b.len() && m.offset >= len));
            }
        }
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
            assert_eq!(DType::from_u8(d as u8), Some(d));
        }
        assert_eq!(DType::parse("FLOAT"), None);
    }
}
