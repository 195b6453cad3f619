//! Page-locking the shared-memory region so the GPU copies batches straight
//! out of (and results straight into) the tensor slots by DMA, with no staging
//! copy: `cuMemHostRegister` over the whole mapping, once per process.

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError, sys};

/// A registered range; unregistered on drop. Holds the region so the mapping
/// outlives the registration.
pub struct Pinned {
    region: Arc<shm::Region>,
    ctx: Arc<CudaContext>,
}

impl Pinned {
    /// Registers all of `region` with `ctx` (portable: every context of the
    /// process sees it pinned).
    pub fn register(ctx: &Arc<CudaContext>, region: Arc<shm::Region>) -> Result<Pinned, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: the range is one live mapping of `region.len()` bytes that
        // this struct keeps alive (it holds the Arc) until it unregisters it.
        unsafe {
            sys::cuMemHostRegister_v2(region.base_ptr().cast(), region.len(), sys::CU_MEMHOSTREGISTER_PORTABLE)
                .result()?;
        }
        Ok(Pinned { region, ctx: ctx.clone() })
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: the pointer is the one registered in `register`, still
            // mapped because `self.region` is alive.
            let _ = unsafe { sys::cuMemHostUnregister(self.region.base_ptr().cast()) };
        }
    }
}
