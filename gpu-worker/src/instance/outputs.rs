//! Sending a request its outputs: a tensor table, then the bytes, written
//! into a slot and handed to the process that asked. The scatter sends this
//! way, and so do outputs that waited for a slot.

use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Kind, Peers, ProcId, ShmError, Slot};

/// Writes a request's outputs into `out` (a table, then the bytes) and sends
/// it to the process that asked.
pub fn send_outputs(
    peers: &Peers,
    desc: &Descriptor,
    specs: &[TensorSpec],
    data: &[impl AsRef<[u8]>],
    mut out: Slot,
) -> Result<(), ShmError> {
    let (table_len, ranges) = tensor::write_table(out.as_mut_slice(), 0, specs)?;
    for (src, range) in data.iter().zip(ranges) {
        out.as_mut_slice()[range].copy_from_slice(src.as_ref());
    }
    let d = Descriptor { kind: Kind::Outputs as u8, offset: 0, len: table_len as u32, sent_ns: shm::now_ns(), ..*desc };
    peers.send(ProcId(desc.reply_to), d, out)
}
