//! Which GPUs this machine has, through the driver API.

use super::libs;

/// One visible GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub ordinal: u32,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// Why there is no GPU to use.
#[derive(Debug, thiserror::Error)]
pub enum NoGpu {
    #[error(transparent)]
    Library(#[from] libs::Missing),
    #[error("the CUDA driver is installed but reports no usable GPU: {0}")]
    Driver(String),
    #[error("the CUDA driver reports no GPU (is CUDA_VISIBLE_DEVICES empty?)")]
    NoDevice,
}

/// True when the driver library can be loaded (by name, as cudarc will).
pub fn driver_loadable() -> bool {
    // SAFETY: probes dlopen with the driver's library names; loading the
    // NVIDIA driver runs only its own initializers, and the handle is dropped.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The GPUs the driver reports, after checking that the driver library is
/// there (cudarc panics on a missing library; this returns an error).
pub fn probe() -> Result<Vec<Gpu>, NoGpu> {
    if !driver_loadable() {
        return Err(libs::Missing { missing: vec![&libs::DRIVER], searched: libs::search_dirs(&[]) }.into());
    }
    let driver = |e: cudarc::driver::DriverError| NoGpu::Driver(e.to_string());
    cudarc::driver::result::init().map_err(driver)?;
    let count = cudarc::driver::result::device::get_count().map_err(driver)?;
    if count <= 0 {
        return Err(NoGpu::NoDevice);
    }
    (0..count)
        .map(|i| {
            let dev = cudarc::driver::result::device::get(i).map_err(driver)?;
            let name = cudarc::driver::result::device::get_name(dev).map_err(driver)?;
            // SAFETY: `dev` came from cuDeviceGet for an index below the count.
            let memory_bytes = unsafe { cudarc::driver::result::device::total_mem(dev) }.map_err(driver)?;
            use cudarc::driver::sys::CUdevice_attribute as A;
            // SAFETY: as above; the attributes exist on every CUDA device.
            let major = unsafe {
                cudarc::driver::result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            }
            .map_err(driver)?;
            // SAFETY: as above.
            let minor = unsafe {
                cudarc::driver::result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            }
            .map_err(driver)?;
            Ok(Gpu { ordinal: i as u32, name, compute_capability: (major, minor), memory_bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine with a driver this lists the GPUs; without one it must
    /// be an error naming libcuda, never a panic.
    #[test]
    fn probe_reports_gpus_or_names_the_missing_driver() {
        match probe() {
            Ok(gpus) => {
                eprintln!("GPUs: {gpus:?}");
                assert!(gpus.iter().all(|g| g.memory_bytes > 0 && g.compute_capability.0 >= 3));
            }
            Err(NoGpu::Library(m)) => {
                eprintln!("skipped: no CUDA driver on this machine ({m})");
                assert!(m.to_string().contains("libcuda.so.1"));
            }
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
}
