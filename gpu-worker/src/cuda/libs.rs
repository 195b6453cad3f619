//! Finding the CUDA libraries. The binary links none of them (cudarc loads
//! them at run time), so a machine without CUDA runs the CPU backend and a
//! machine with a GPU needs only the libraries present, in any of the places
//! NVIDIA's packages put them:
//!
//! 1. the directories in `HIGHSERVE_CUDA_LIBS` (colon-separated), then those
//!    in the config's `inference.cuda_library_path`;
//! 2. `LD_LIBRARY_PATH`, `$CUDA_HOME`/`$CUDA_PATH` (`lib64`, `lib`);
//! 3. the CUDA toolkit (`/usr/local/cuda/lib64`, `.../targets/x86_64-linux/lib`),
//!    the driver's container mount (`/usr/local/nvidia/lib64`) and the
//!    system library directories;
//! 4. the `nvidia-*` pip wheels (`site-packages/nvidia/*/lib`), which is where
//!    PyTorch's cuDNN and cuBLAS live on most GPU hosts;
//! 5. the dynamic loader's cache (a library `ldconfig` knows counts as found).
//!
//! The supervisor puts the directories it found on the inference workers'
//! `LD_LIBRARY_PATH`, so cudarc's by-name `dlopen` and the libraries' own
//! `dlopen`s (cuDNN loads its engine libraries itself) all resolve.

use std::path::{Path, PathBuf};

/// The environment variable naming extra library directories.
pub const ENV: &str = "HIGHSERVE_CUDA_LIBS";

/// One CUDA library: what it is for and the file names it goes by, the
/// preferred (newest) first.
#[derive(Debug, PartialEq, Eq)]
pub struct Lib {
    pub name: &'static str,
    pub purpose: &'static str,
    pub files: &'static [&'static str],
    /// How to get it, for the error message.
    pub get: &'static str,
}

pub const DRIVER: Lib = Lib {
    name: "CUDA driver",
    purpose: "every GPU call",
    files: &["libcuda.so.1", "libcuda.so"],
    get: "install the NVIDIA driver (in a container: run it with the NVIDIA container toolkit)",
};
pub const CUDART: Lib = Lib {
    name: "CUDA runtime",
    purpose: "device properties (tract-cuda)",
    files: &["libcudart.so.13", "libcudart.so.12", "libcudart.so"],
    get: "pip package nvidia-cuda-runtime, or the CUDA toolkit",
};
pub const NVRTC: Lib = Lib {
    name: "NVRTC",
    purpose: "compiling the GPU kernels at start-up",
    files: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    get: "pip package nvidia-cuda-nvrtc, or the CUDA toolkit",
};
pub const CUBLAS: Lib = Lib {
    name: "cuBLAS",
    purpose: "matrix products",
    files: &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
    get: "pip package nvidia-cublas, or the CUDA toolkit",
};
pub const CUDNN: Lib = Lib {
    name: "cuDNN",
    purpose: "convolutions",
    files: &["libcudnn.so.9", "libcudnn.so"],
    get: "pip package nvidia-cudnn-cu13 (or -cu12), or NVIDIA's cudnn9 packages",
};
pub const NVJPEG: Lib = Lib {
    name: "nvJPEG",
    purpose: "JPEG decoding on the GPU (models with decode = \"gpu\")",
    files: &["libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"],
    get: "pip package nvidia-nvjpeg, or the CUDA toolkit",
};

/// What the tract-cuda backend needs.
pub const FOR_TRACT: &[&Lib] = &[&DRIVER, &CUDART, &NVRTC, &CUBLAS, &CUDNN];

/// A library that was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: &'static str,
    /// The file, or just its name when only the loader's cache knows it.
    pub path: PathBuf,
}

/// Libraries that were not found, and where they were looked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_missing(.missing, .searched))]
pub struct Missing {
    pub missing: Vec<&'static Lib>,
    pub searched: Vec<PathBuf>,
}

fn describe_missing(missing: &[&Lib], searched: &[PathBuf]) -> String {
    let libs: Vec<String> =
        missing.iter().map(|l| format!("{} ({}, for {}; {})", l.files[0], l.name, l.purpose, l.get)).collect();
    let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
    format!(
        "CUDA library not found: {}. Searched {} and the loader cache; set {ENV} to the directory that holds it",
        libs.join("; "),
        if dirs.is_empty() { "no directories".to_string() } else { dirs.join(", ") },
    )
}

/// The directories searched, in order, without duplicates or missing ones.
pub fn search_dirs(configured: &[PathBuf]) -> Vec<PathBuf> {
    let env_list = |name: &str| -> Vec<PathBuf> {
        std::env::var_os(name).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default()
    };
    let mut dirs: Vec<PathBuf> = env_list(ENV);
    dirs.extend(configured.iter().cloned());
    dirs.extend(env_list("LD_LIBRARY_PATH"));
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(pip_wheel_dirs(&site_packages()));
    let mut seen = Vec::new();
    for d in dirs {
        if d.is_dir() && !seen.contains(&d) {
            seen.push(d);
        }
    }
    seen
}

/// Python package directories where `nvidia-*` wheels may be installed.
fn site_packages() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut lib_dirs: Vec<PathBuf> = vec!["/usr/local/lib".into(), "/usr/lib".into()];
    if let Some(home) = std::env::var_os("HOME") {
        lib_dirs.push(PathBuf::from(home).join(".local/lib"));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            lib_dirs.push(PathBuf::from(v).join("lib"));
        }
    }
    // Virtual environments one level below /opt (e.g. /opt/torch/.venv).
    for opt in children(Path::new("/opt")) {
        lib_dirs.push(opt.join(".venv/lib"));
        lib_dirs.push(opt.join("venv/lib"));
        lib_dirs.push(opt.join("lib"));
    }
    for lib in lib_dirs {
        for py in children(&lib) {
            let is_python = py.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3"));
            if is_python {
                roots.push(py.join("site-packages"));
                roots.push(py.join("dist-packages"));
            }
        }
    }
    roots.push("/usr/lib/python3/dist-packages".into());
    roots
}

/// `<root>/nvidia/*/lib` for each root: one directory per wheel (cudnn,
/// cublas, cuda_nvrtc, ...; CUDA 13 wheels share `nvidia/cu13/lib`).
pub fn pip_wheel_dirs(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in roots {
        let mut wheels = children(&root.join("nvidia"));
        wheels.sort();
        out.extend(wheels.into_iter().map(|w| w.join("lib")).filter(|l| l.is_dir()));
    }
    out
}

fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Looks for each library in `dirs`, then asks `in_loader_cache` about the
/// ones still missing.
pub fn locate(
    libs: &[&'static Lib],
    dirs: &[PathBuf],
    in_loader_cache: &dyn Fn(&str) -> bool,
) -> Result<Vec<Found>, Missing> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &lib in libs {
        let in_dir = lib.files.iter().find_map(|f| dirs.iter().map(|d| d.join(f)).find(|p| p.exists()));
        match in_dir.or_else(|| lib.files.iter().find(|f| in_loader_cache(f)).map(PathBuf::from)) {
            Some(path) => found.push(Found { name: lib.name, path }),
            None => missing.push(lib),
        }
    }
    if missing.is_empty() { Ok(found) } else { Err(Missing { missing, searched: dirs.to_vec() }) }
}

/// The directories of the libraries found on disk, for `LD_LIBRARY_PATH`.
pub fn library_path(found: &[Found]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in found {
        if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dirs.iter().any(|d| d == dir)
        {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs
}

/// `LD_LIBRARY_PATH` for a child: `dirs` first, then what the variable
/// already holds.
pub fn ld_library_path(dirs: &[PathBuf]) -> std::ffi::OsString {
    let mut all: Vec<PathBuf> = dirs.to_vec();
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        all.extend(std::env::split_paths(&v).filter(|p| !dirs.contains(p)));
    }
    std::env::join_paths(all).unwrap_or_default()
}

/// True when the dynamic loader resolves `file` by name (its cache, the
/// system directories, `LD_LIBRARY_PATH` as this process started with).
pub fn in_loader_cache(file: &str) -> bool {
    // SAFETY: dlopen of a CUDA library by name runs only that library's
    // initializers; the handle is closed again at once.
    unsafe { libloading::Library::new(file) }.is_ok()
}

/// Loads the libraries found on disk by their full path, for the life of the
/// process, so that later by-name `dlopen`s (cudarc's) resolve to them even
/// when their directory is not on this process's loader path.
pub fn preload(found: &[Found]) -> Result<(), String> {
    for f in found.iter().filter(|f| f.path.is_absolute()) {
        // SAFETY: as above; the handle is leaked on purpose so the library
        // stays loaded and its soname resolvable.
        let lib = unsafe { libloading::Library::new(&f.path) }
            .map_err(|e| format!("cannot load {} ({}): {e}", f.path.display(), f.name))?;
        std::mem::forget(lib);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, file: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(file), b"").expect("write");
    }

    #[test]
    fn finds_each_library_in_the_first_directory_that_has_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        touch(&a, "libcudnn.so.9");
        touch(&b, "libcudnn.so.9");
        touch(&b, "libnvrtc.so.12");
        let found = locate(&[&CUDNN, &NVRTC], &[a.clone(), b.clone()], &|_| false).expect("both found");
        assert_eq!(found[0], Found { name: "cuDNN", path: a.join("libcudnn.so.9") });
        assert_eq!(found[1], Found { name: "NVRTC", path: b.join("libnvrtc.so.12") });
        assert_eq!(library_path(&found), vec![a, b]);
    }

    #[test]
    fn prefers_the_newest_file_name() {
        let t = tempfile::tempdir().expect("tempdir");
        touch(t.path(), "libcublas.so.12");
        touch(t.path(), "libcublas.so.13");
        let found = locate(&[&CUBLAS], &[t.path().to_path_buf()], &|_| false).expect("found");
        assert!(found[0].path.ends_with("libcublas.so.13"), "{found:?}");
    }

    #[test]
    fn the_loader_cache_counts_and_adds_no_directory() {
        let found = locate(&[&DRIVER], &[], &|f| f == "libcuda.so.1").expect("found through the cache");
        assert_eq!(found[0].path, PathBuf::from("libcuda.so.1"));
        assert!(library_path(&found).is_empty());
    }

    #[test]
    fn missing_libraries_are_named_with_where_to_get_them() {
        let t = tempfile::tempdir().expect("tempdir");
        touch(t.path(), "libcuda.so.1");
        let err = locate(FOR_TRACT, &[t.path().to_path_buf()], &|_| false).expect_err("most are missing");
        let names: Vec<&str> = err.missing.iter().map(|l| l.name).collect();
        assert_eq!(names, ["CUDA runtime", "NVRTC", "cuBLAS", "cuDNN"]);
        let msg = err.to_string();
        assert!(msg.contains("libcudnn.so.9 (cuDNN, for convolutions; pip package nvidia-cudnn-cu13"), "{msg}");
        assert!(msg.contains(&t.path().display().to_string()), "{msg}");
        assert!(msg.contains(ENV), "{msg}");
    }

    #[test]
    fn pip_wheels_are_searched_per_package() {
        let t = tempfile::tempdir().expect("tempdir");
        let site = t.path().join("site-packages");
        touch(&site.join("nvidia/cudnn/lib"), "libcudnn.so.9");
        touch(&site.join("nvidia/cu13/lib"), "libnvrtc.so.13");
        std::fs::create_dir_all(site.join("nvidia/empty")).expect("mkdir");
        let dirs = pip_wheel_dirs(&[site.clone(), t.path().join("absent")]);
        assert_eq!(dirs, vec![site.join("nvidia/cu13/lib"), site.join("nvidia/cudnn/lib")]);
    }

    #[test]
    fn configured_directories_come_first_and_only_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().to_path_buf();
        let dirs = search_dirs(&[d.clone(), d.clone(), t.path().join("absent")]);
        assert_eq!(dirs.iter().filter(|x| **x == d).count(), 1);
        assert!(!dirs.contains(&t.path().join("absent")));
    }
}
