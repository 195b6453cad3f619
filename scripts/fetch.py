#!/usr/bin/env python3
"""Fetches everything highserve needs that is not in git, checking sha256.

  - the ONNX Runtime shared library (from PyPI's onnxruntime wheel) into
    .cache/onnxruntime/
  - the PP-OCR models (from PyPI's rapidocr-onnxruntime wheel) into
    models/<name>/1/model.onnx, with the package's license notice, each
    rewritten by scripts/fuse_onnx.py (same results to float rounding, a
    quarter to two fifths less CPU time) in a small venv, .cache/venv-tools
    (onnx and numpy, scripts/requirements-tools.txt); --original-models puts
    the files exactly as the wheel has them instead (to measure the rewrite)
  - with --test: a Python venv for the client tests (.cache/venv), the test
    images (.cache/testdata/) and the OCR test set (.cache/ocrset/: images and
    manifest.json, from scripts/make_ocr_testset.py), and NVRTC and nvJPEG
    (from PyPI's nvidia-cuda-nvrtc and nvidia-nvjpeg wheels, CUDA 13.0) into
    .cache/cuda/lib/ so the GPU kernels' compile test and nvJPEG's loading
    test run on machines without CUDA
  - with --ref: a second venv, .cache/venv-ref, with the OCR reference
    (rapidocr-onnxruntime 1.4.4 and its pinned dependencies from
    scripts/requirements-ref.txt, installed with --no-deps) for
    scripts/ocr_reference.py, scripts/rapidocr_server.py and scripts/bench_ocr

Everything is skipped when already present and intact (a model file is
redone when fuse_onnx.py or the tools' versions change). Only the standard
library is used here, so it runs on a fresh machine with python3 and pip.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
DOWNLOADS = CACHE / "downloads"

# (requirement, wheel file name, sha256). Platform-specific wheels are pinned
# by platform tag so the download does not depend on the local Python.
ORT = (
    "onnxruntime==1.32.0",
    "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"],
)
RAPIDOCR = (
    "rapidocr-onnxruntime==1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    [],
)
# Sample photographs for test images (skimage/data: astronaut is NASA public
# domain, coffee and chelsea are CC0 per skimage/data/README).
SKIMAGE = (
    "scikit-image==0.25.2",
    "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
    ["--platform", "manylinux_2_17_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"],
)
# NVRTC compiles CUDA C to PTX without a GPU; 13.0 matches the GPU hosts'
# driver (580), so PTX it makes also loads there.
NVRTC = (
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
    "ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575",
    ["--platform", "manylinux2010_x86_64", "--platform", "manylinux_2_12_x86_64", "--python-version", "3.12",
     "--implementation", "py"],
)
# nvJPEG (CUDA 13.0) carries its own CUDA runtime: it loads and reports its
# version without a GPU, which the test suite checks; gpu-check packs it for
# the GPU host, whose toolkit may lack it.
NVJPEG = (
    "nvidia-nvjpeg==13.0.2.28",
    "nvidia_nvjpeg-13.0.2.28-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "5d7080cfcd8d1eefb0d7fd1086011c8aa09e9c66c4e1fe69a87321a51acce556",
    ["--platform", "manylinux_2_17_x86_64", "--python-version", "3.12", "--implementation", "py"],
)
MODELS = {
    "ppocr_det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocr_rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
}
# What fuse_onnx.py makes of each with requirements-tools.txt's versions
# (deterministic: the same bytes on every machine so far). A difference is
# reported, not fatal: the rewrite is checked by the tests, not by the hash.
FUSED_SHA256 = {
    "ppocr_det": "f3cef56925579acb",
    "ppocr_cls": "cd56ab0f34f14cff",
    "ppocr_rec": "9ddd85e0e9d29a5b",
}
ORT_LIB = "libonnxruntime.so.1.32.0"
TEST_REQUIREMENTS = ROOT / "scripts" / "requirements-test.txt"
REF_REQUIREMENTS = ROOT / "scripts" / "requirements-ref.txt"
TOOLS_REQUIREMENTS = ROOT / "scripts" / "requirements-tools.txt"
FUSE = ROOT / "scripts" / "fuse_onnx.py"


def log(msg):
    print(f"fetch: {msg}", file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(spec):
    req, name, digest, extra = spec
    path = DOWNLOADS / name
    if path.exists() and sha256(path) == digest:
        return path
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    log(f"downloading {req}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(DOWNLOADS), req, *extra]
    subprocess.run(cmd, check=True)
    if not path.exists():
        sys.exit(f"fetch: pip did not produce {name}; is the index reachable?")
    got = sha256(path)
    if got != digest:
        path.unlink()
        sys.exit(f"fetch: {name} has sha256 {got}, expected {digest}; refusing to use it")
    return path


def extract(wheel, member, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    tmp.replace(dest)


def fetch_ort():
    lib = CACHE / "onnxruntime" / ORT_LIB
    stamp = CACHE / "onnxruntime" / ".sha256"
    if lib.exists() and stamp.exists() and stamp.read_text().strip() == sha256(lib):
        return
    wheel = download(ORT)
    for member in [f"onnxruntime/capi/{ORT_LIB}", "onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt"]:
        extract(wheel, member, CACHE / "onnxruntime" / Path(member).name)
    link = CACHE / "onnxruntime" / "libonnxruntime.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ORT_LIB)
    stamp.write_text(sha256(lib) + "\n")
    log(f"ONNX Runtime library in {lib.relative_to(ROOT)}")


def fetch_tools_env():
    return make_venv(CACHE / "venv-tools", TOOLS_REQUIREMENTS, "the model tools venv (.cache/venv-tools)", [])


def fetch_models(original=False):
    """Each model file as the wheel has it, or rewritten by fuse_onnx.py; a
    stamp beside it says which (and from which rewrite), so switching or
    changing the rewrite redoes the file."""
    wheel = None
    tools = None
    if original:
        key = "original\n"
    else:
        key = f"fused {sha256(FUSE)} {sha256(TOOLS_REQUIREMENTS)}\n"
    for name, member in MODELS.items():
        dest = ROOT / "models" / name / "1" / "model.onnx"
        stamp = dest.parent / ".fetched"
        if dest.exists() and stamp.exists() and stamp.read_text() == key:
            continue
        wheel = wheel or download(RAPIDOCR)
        if original:
            extract(wheel, member, dest)
        else:
            tools = tools or fetch_tools_env()
            raw = DOWNLOADS / f"{name}.original.onnx"
            extract(wheel, member, raw)
            tmp = dest.with_suffix(".fused.part")
            dest.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(tools), str(FUSE), str(raw), str(tmp)], check=True)
            tmp.replace(dest)
            got = sha256(dest)
            if not got.startswith(FUSED_SHA256[name]):
                log(f"note: fused {name} has sha256 {got[:16]}..., not the {FUSED_SHA256[name]}... that "
                    "the tests were run with (other onnx/numpy versions?); scripts/test checks its answers")
        stamp.write_text(key)
        log(f"model {name} in {dest.relative_to(ROOT)} ({'as published' if original else 'fused'})")
    notice = ROOT / "models" / "NOTICE-rapidocr"
    if not notice.exists() or "fuse_onnx" not in notice.read_text():
        wheel = wheel or download(RAPIDOCR)
        with zipfile.ZipFile(wheel) as z:
            meta = z.read("rapidocr_onnxruntime-1.4.4.dist-info/METADATA").decode()
        notice.write_text(
            "The ppocr_det, ppocr_cls and ppocr_rec model files come from the PyPI\n"
            "package rapidocr-onnxruntime 1.4.4 (PaddleOCR models converted to ONNX by\n"
            "RapidAI), distributed under the Apache License 2.0\n"
            "(https://www.apache.org/licenses/LICENSE-2.0). highserve's scripts/fetch\n"
            "rewrites their graphs with scripts/fuse_onnx.py (constant scales and biases\n"
            "folded into convolutions, hard-swish as one node); --original-models keeps\n"
            "them as published. The package's metadata:\n\n" + meta
        )


def make_venv(venv, requirements, what, pip_flags):
    py = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = requirements.read_text()
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return py
    log(f"creating {what}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *pip_flags, "-r", str(requirements)], check=True)
    stamp.write_text(wanted)
    return py


def fetch_test_env():
    return make_venv(CACHE / "venv", TEST_REQUIREMENTS, "the test venv (.cache/venv)", [])


def fetch_photos():
    photos = CACHE / "photos"
    names = ["astronaut.png", "coffee.png", "chelsea.png"]
    if not all((photos / n).exists() for n in names):
        wheel = download(SKIMAGE)
        for n in names:
            extract(wheel, f"skimage/data/{n}", photos / n)
    return photos


def fetch_testdata(py):
    out = CACHE / "testdata"
    stamp = out / ".done"
    generator = ROOT / "scripts" / "make_test_images.py"
    key = sha256(generator)
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    photos = fetch_photos()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(py), str(generator), str(photos), str(out)], check=True)
    stamp.write_text(key + "\n")
    log(f"test images in {out.relative_to(ROOT)}")


def fetch_ocrset(py):
    out = CACHE / "ocrset"
    stamp = out / ".done"
    generator = ROOT / "scripts" / "make_ocr_testset.py"
    key = sha256(generator)
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    subprocess.run([str(py), str(generator), "--photos", str(fetch_photos()), str(out)], check=True)
    stamp.write_text(key + "\n")
    log(f"OCR test set in {out.relative_to(ROOT)}")


def fetch_cuda_lib(what, pin, names):
    """Extracts `names` from a pinned nvidia-* wheel into .cache/cuda/lib."""
    out = CACHE / "cuda" / "lib"
    stamp = out / f".{what}.sha256"
    if stamp.exists() and stamp.read_text().strip() == pin[2] and all((out / n).exists() for n in names):
        return
    wheel = download(pin)
    for n in names:
        extract(wheel, f"nvidia/cu13/lib/{n}", out / n)
    stamp.write_text(pin[2] + "\n")
    log(f"{what} in {out.relative_to(ROOT)}")


def fetch_nvrtc():
    fetch_cuda_lib("NVRTC", NVRTC, ["libnvrtc.so.13", "libnvrtc-builtins.so.13.0"])


def fetch_nvjpeg():
    fetch_cuda_lib("nvJPEG", NVJPEG, ["libnvjpeg.so.13"])


def fetch_ref_env():
    # rapidocr-onnxruntime requires the GUI opencv-python (libGL); the file pins
    # the whole closure with opencv-python-headless instead, so --no-deps.
    return make_venv(CACHE / "venv-ref", REF_REQUIREMENTS, "the OCR reference venv (.cache/venv-ref)",
                     ["--no-deps", "--only-binary=:all:"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", action="store_true", help="also the test venv, test images and OCR test set")
    ap.add_argument("--ref", action="store_true", help="also the OCR reference venv (.cache/venv-ref)")
    ap.add_argument("--original-models", action="store_true",
                    help="the model files exactly as published, not rewritten by scripts/fuse_onnx.py")
    args = ap.parse_args()
    os.chdir(ROOT)
    fetch_ort()
    fetch_models(original=args.original_models)
    if args.test:
        py = fetch_test_env()
        fetch_testdata(py)
        fetch_ocrset(py)
        fetch_nvrtc()
        fetch_nvjpeg()
    if args.ref:
        fetch_ref_env()


if __name__ == "__main__":
    main()
