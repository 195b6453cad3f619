//! Where the models run: decided once by the supervisor at start-up from
//! `[inference] device`, `devices` and what this machine has. On GPUs there is
//! one inference worker per device, each started with `CUDA_VISIBLE_DEVICES`
//! naming its GPU and `LD_LIBRARY_PATH` holding the CUDA libraries' directories.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::bail;
use gpu_worker::cuda::{device, libs};

use crate::config::{DeviceChoice, Inference};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `workers` CPU inference workers.
    Cpu { workers: u32 },
    /// One inference worker per listed CUDA ordinal.
    Gpu { devices: Vec<u32>, library_path: OsString },
}

impl Placement {
    pub fn workers(&self) -> u32 {
        match self {
            Placement::Cpu { workers } => *workers,
            Placement::Gpu { devices, .. } => devices.len() as u32,
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Placement::Gpu { .. })
    }

    /// The CUDA ordinal inference worker `index` drives, if any.
    pub fn device(&self, index: u16) -> Option<u32> {
        match self {
            Placement::Cpu { .. } => None,
            Placement::Gpu { devices, .. } => devices.get(index as usize).copied(),
        }
    }
}

/// What the machine offers, so the decision can be tested without a GPU.
pub struct Probe {
    pub libraries: Result<Vec<libs::Found>, libs::Missing>,
    pub gpus: Box<dyn Fn() -> Result<Vec<device::Gpu>, device::NoGpu>>,
}

impl Probe {
    /// This machine: the tract-cuda libraries (and nvJPEG when a model
    /// decodes on the GPU), then the driver's GPU list.
    pub fn system(inf: &Inference, nvjpeg: bool) -> Probe {
        let dirs = libs::search_dirs(&inf.cuda_library_path);
        let mut wanted = libs::FOR_TRACT.to_vec();
        if nvjpeg {
            wanted.push(&libs::NVJPEG);
        }
        let libraries = libs::locate(&wanted, &dirs, &libs::in_loader_cache);
        let found = libraries.clone().unwrap_or_default();
        Probe {
            libraries,
            gpus: Box::new(move || {
                libs::preload(&found).map_err(device::NoGpu::Driver)?;
                device::probe()
            }),
        }
    }
}

pub fn decide(inf: &Inference, probe: &Probe) -> anyhow::Result<Placement> {
    let cpu = Placement::Cpu { workers: inf.workers };
    if inf.device == DeviceChoice::Cpu {
        return Ok(cpu);
    }
    let unusable = |why: String| -> anyhow::Result<Placement> {
        if inf.device == DeviceChoice::Gpu {
            bail!("inference.device = \"gpu\" but {why}; set inference.device = \"auto\" or \"cpu\" to run on the CPU");
        }
        tracing::warn!("running models on the CPU: {why}");
        Ok(Placement::Cpu { workers: inf.workers })
    };
    let found = match &probe.libraries {
        Ok(found) => found.clone(),
        // No driver: a machine without an NVIDIA GPU, the common case.
        Err(missing) if inf.device == DeviceChoice::Auto && missing.missing.contains(&&libs::DRIVER) => {
            tracing::info!("no CUDA driver on this machine; models run on the CPU");
            return Ok(cpu);
        }
        Err(missing) => return unusable(missing.to_string()),
    };
    let gpus = match (probe.gpus)() {
        Ok(gpus) => gpus,
        Err(e) => return unusable(e.to_string()),
    };
    for g in &gpus {
        tracing::info!(
            "GPU {}: {} (compute capability {}.{}, {} MiB)",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.memory_bytes >> 20
        );
    }
    let devices: Vec<u32> =
        if inf.devices.is_empty() { gpus.iter().map(|g| g.ordinal).collect() } else { inf.devices.clone() };
    if let Some(bad) = devices.iter().find(|d| !gpus.iter().any(|g| g.ordinal == **d)) {
        let have: Vec<String> = gpus.iter().map(|g| format!("{} ({})", g.ordinal, g.name)).collect();
        bail!("inference.devices names GPU {bad}, but this machine has {}", have.join(", "));
    }
    let dirs: Vec<PathBuf> = libs::library_path(&found);
    for f in &found {
        tracing::info!("CUDA {}: {}", f.name, f.path.display());
    }
    Ok(Placement::Gpu { devices, library_path: libs::ld_library_path(&dirs) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inference(device: DeviceChoice, devices: Vec<u32>) -> Inference {
        Inference {
            onnxruntime_library: PathBuf::new(),
            intra_op_threads: 1,
            max_concurrent_batches: 0,
            workers: 2,
            device,
            devices,
            cuda_library_path: vec![],
            gpu_backend: Default::default(),
        }
    }

    fn gpu(ordinal: u32) -> device::Gpu {
        device::Gpu { ordinal, name: "NVIDIA H100".into(), compute_capability: (9, 0), memory_bytes: 80 << 30 }
    }

    fn machine(libs_ok: bool, gpus: usize) -> Probe {
        let libraries = if libs_ok {
            Ok(vec![libs::Found { name: "cuDNN", path: "/opt/cudnn/lib/libcudnn.so.9".into() }])
        } else {
            Err(libs::Missing { missing: vec![&libs::CUDNN], searched: vec!["/usr/lib".into()] })
        };
        Probe {
            libraries,
            gpus: Box::new(move || {
                if gpus == 0 { Err(device::NoGpu::NoDevice) } else { Ok((0..gpus as u32).map(gpu).collect()) }
            }),
        }
    }

    #[test]
    fn cpu_is_cpu_whatever_the_machine() {
        let p = decide(&inference(DeviceChoice::Cpu, vec![]), &machine(true, 4)).expect("cpu");
        assert_eq!(p, Placement::Cpu { workers: 2 });
    }

    #[test]
    fn auto_falls_back_to_the_cpu_and_gpu_refuses_naming_the_library() {
        let p = decide(&inference(DeviceChoice::Auto, vec![]), &machine(false, 1)).expect("falls back");
        assert_eq!(p, Placement::Cpu { workers: 2 });
        let e = decide(&inference(DeviceChoice::Gpu, vec![]), &machine(false, 1)).expect_err("refuses").to_string();
        assert!(e.contains("libcudnn.so.9") && e.contains("inference.device = \"auto\""), "{e}");
        let e = decide(&inference(DeviceChoice::Gpu, vec![]), &machine(true, 0)).expect_err("no GPU").to_string();
        assert!(e.contains("reports no GPU"), "{e}");
    }

    #[test]
    fn a_model_decoding_on_the_gpu_makes_nvjpeg_required() {
        // nvJPEG is among the libraries found or among those missing.
        let looked_for = |nvjpeg| match Probe::system(&inference(DeviceChoice::Auto, vec![]), nvjpeg).libraries {
            Ok(found) => found.iter().any(|f| f.name == "nvJPEG"),
            Err(m) => m.missing.iter().any(|l| l.name == "nvJPEG"),
        };
        assert!(looked_for(true), "a model with decode = \"gpu\" needs nvJPEG on a GPU");
        assert!(!looked_for(false), "nvJPEG is looked for only when a model decodes on the GPU");
    }

    #[test]
    fn one_worker_per_gpu_all_or_the_listed_ones() {
        let p = decide(&inference(DeviceChoice::Auto, vec![]), &machine(true, 3)).expect("gpus");
        assert_eq!(p.workers(), 3);
        assert_eq!(p.device(2), Some(2));
        let Placement::Gpu { library_path, .. } = &p else { panic!("{p:?}") };
        assert!(library_path.to_string_lossy().starts_with("/opt/cudnn/lib"), "{library_path:?}");
        let p = decide(&inference(DeviceChoice::Gpu, vec![2, 0]), &machine(true, 3)).expect("listed");
        assert_eq!((p.workers(), p.device(0), p.device(1)), (2, Some(2), Some(0)));
        let e = decide(&inference(DeviceChoice::Gpu, vec![5]), &machine(true, 2)).expect_err("no GPU 5").to_string();
        assert!(e.contains("names GPU 5, but this machine has 0 (NVIDIA H100), 1 (NVIDIA H100)"), "{e}");
    }
}
