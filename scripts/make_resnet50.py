#!/usr/bin/env python3
"""Makes a ResNet-50-shaped ONNX model with seeded random weights, and the
benchmark model repository that serves it next to ppocr_cls and ocr.

usage: scripts/make_resnet50.py [--repository DIR] [--check] [--force]

The model is the standard ResNet-50 v1.5 topology (torchvision's resnet50:
7x7/2 stem, 3x3/2 max pool, bottleneck stages of 3, 4, 6 and 3 blocks with
the stride on the 3x3 convolution, global average pool, 2048 -> 1000 fully
connected), 25.6 M parameters, about 4.1 GFLOPs per 224x224 image, with
BatchNorm folded into the convolutions (conv + bias, as a deployed model
looks after ONNX Runtime's own folding). ONNX opset 17, IR version 8:

  input   `input`  FP32 [N, 3, 224, 224]  (N dynamic)
  output  `logits` FP32 [N, 1000]

Weights come from numpy's RandomState(0): He-normal (std sqrt(2 / fan_in))
for every convolution, the last convolution of each residual branch scaled
by 0.2 (as zero-init-gamma training would leave it, small) so that the
activations stay bounded through 16 residual additions, small random
biases, and an FC layer with std sqrt(1 / 2048). The answers mean nothing;
the cost of computing them is ResNet-50's. The file is byte-for-byte the
same on every run (its sha256 is printed).

It writes the benchmark repository (default .cache/models-bench, git-ignored),
kept apart from models/ so the daemon's default repository, what it loads by
default and the test suite are unchanged:

  .cache/models-bench/
    resnet50/config.toml       (CONFIG below)
    resnet50/1/model.onnx
    ppocr_cls -> ../../models/ppocr_cls   (a symlink; scripts/fetch fetches it)
    ocr, ppocr_det, ppocr_rec -> ../../models/...   (the same: the OCR pipeline)

and serves it with `highserve serve --models .cache/models-bench --load
resnet50` (or `--load ppocr_cls`, `--load ocr`). With --check it then runs the model in
onnxruntime at batch 1 and 8 and checks the shapes and that the logits are
finite and of sane size. Needs only numpy (it writes the ONNX protobuf
itself, so it also runs on a GPU host that has PyTorch but not the `onnx`
package); --check needs onnxruntime. Where numpy is missing it starts itself
with the peers' venv (.cache/venv-peers, made by scripts/side_by_side).
"""

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".cache" / "venv-peers" / "bin" / "python"
DEFAULT_REPOSITORY = ROOT / ".cache" / "models-bench"
LINKED = ["ppocr_cls", "ocr", "ppocr_det", "ppocr_rec"]

# The highserve model configuration (docs/model-repository.md). Two
# instances with one intra-op thread each: on a 2-core machine both cores
# compute batches at once, the same 2 sessions x 1 thread the peers get.
# Batches of at most 2, formed without waiting: on this CPU ONNX Runtime's
# cost per ResNet-50 image is within 3% from batch 1 to 16, so large batches
# buy nothing, and they cost latency: a request that just missed a batch of 8
# waits for all of it. Measured alternately, 15 s at c=16, twice each: batches
# of up to 8 with a 2 ms delay 33.1 / 35.8 req/s, p99 792 / 655 ms; up to 2
# with none 34.7 / 34.9 req/s, p99 515 / 505 ms.
CONFIG = """\
# ResNet-50 v1.5 shape with seeded random weights (scripts/make_resnet50.py):
# the cost of ResNet-50 for the side-by-side benchmark (scripts/side_by_side).
max_batch_size = 2
instances = 2
intra_op_threads = 1

[dynamic_batching]
max_queue_delay_microseconds = 0

[[input]]
name = "input"
datatype = "FP32"
dims = [3, 224, 224]

[[output]]
name = "logits"
datatype = "FP32"
dims = [1000]

# ImageNet normalization, RGB, NCHW; the whole image stretched to 224x224.
[preprocess]
resize = "stretch"
width = 224
height = 224
channel_order = "RGB"
layout = "NCHW"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[postprocess]
kind = "classification"
top_k = 5
softmax = true
"""

# On a GPU the batch size is what buys throughput (an H100 runs ResNet-50 at
# batch 1 far below its peak), and each instance is a CUDA stream: four
# streams let a batch copy in, one compute and one copy out while the
# batcher fills the next. A lone request waits at most 1 ms for company.
GPU_CONFIG = CONFIG.replace("max_batch_size = 2\ninstances = 2\n", "max_batch_size = 128\ninstances = 4\n").replace(
    "max_queue_delay_microseconds = 0\n", "max_queue_delay_microseconds = 1000\npreferred_batch_size = [64, 128]\n")
assert GPU_CONFIG != CONFIG and "max_batch_size = 128" in GPU_CONFIG and "delay_microseconds = 1000" in GPU_CONFIG


def ensure_python():
    try:
        import numpy  # noqa: F401
    except ImportError:
        if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve():
            os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
        sys.exit("make_resnet50: needs numpy: run scripts/side_by_side "
                 "(it makes .cache/venv-peers) or pip install numpy")


# --- ONNX protobuf, written directly -------------------------------------------
# The few onnx.proto (proto2) messages this model needs, encoded field by field
# in field-number order, as protobuf's deterministic serializer does: the bytes
# are the same as onnx.helper + SerializeToString(deterministic=True) would
# write, without needing the onnx package (a GPU host with PyTorch may lack it).

def _varint(n):
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _int(field, value):
    return _varint(field << 3) + _varint(value)


def _len(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


_FLOAT, _INT, _INTS = 1, 2, 7  # TensorProto.FLOAT; AttributeProto.INT, INTS


def _attribute(name, value):
    if isinstance(value, int):
        return _len(1, name) + _int(3, value) + _int(20, _INT)
    return _len(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _INTS)


def _node(op, inputs, outputs, name, **attrs):
    return (b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(3, name)
            + _len(4, op) + b"".join(_len(5, _attribute(k, v)) for k, v in sorted(attrs.items())))


def _tensor(name, array):
    return b"".join(_int(1, d) for d in array.shape) + _int(2, _FLOAT) + _len(8, name) + _len(9, array.tobytes())


def _value_info(name, dims):
    shape = b"".join(_len(1, _len(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _len(1, name) + _len(2, _len(1, _int(1, _FLOAT) + _len(2, shape)))


def build():
    import numpy as np

    rng = np.random.RandomState(0)
    nodes, inits = [], []
    params = 0

    def const(name, array):
        nonlocal params
        array = np.ascontiguousarray(array, dtype="<f4")
        params += array.size
        inits.append(_tensor(name, array))
        return name

    def conv(x, name, cin, cout, k, stride, relu, gain=1.0):
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)) * gain
        b = rng.standard_normal(cout) * 0.01
        y = f"{name}.out"
        nodes.append(_node("Conv", [x, const(f"{name}.weight", w), const(f"{name}.bias", b)], [y], name,
                           kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            nodes.append(_node("Relu", [y], [f"{name}.relu"], f"{name}.relu"))
            return f"{name}.relu"
        return y

    x = conv("input", "conv1", 3, 64, 7, 2, relu=True)
    nodes.append(_node("MaxPool", [x], ["maxpool.out"], "maxpool",
                       kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "maxpool.out", 64
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            cout = width * 4
            y = conv(x, f"{p}.conv1", cin, width, 1, 1, relu=True)
            y = conv(y, f"{p}.conv2", width, width, 3, s, relu=True)  # v1.5: stride on the 3x3
            y = conv(y, f"{p}.conv3", width, cout, 1, 1, relu=False, gain=0.2)
            short = conv(x, f"{p}.downsample", cin, cout, 1, s, relu=False) if b == 0 else x
            nodes.append(_node("Add", [y, short], [f"{p}.add"], f"{p}.add"))
            nodes.append(_node("Relu", [f"{p}.add"], [f"{p}.out"], f"{p}.relu"))
            x, cin = f"{p}.out", cout
    nodes.append(_node("GlobalAveragePool", [x], ["avgpool.out"], "avgpool"))
    nodes.append(_node("Flatten", ["avgpool.out"], ["flatten.out"], "flatten", axis=1))
    fc_w = const("fc.weight", rng.standard_normal((1000, 2048)) * np.sqrt(1.0 / 2048))
    fc_b = const("fc.bias", rng.standard_normal(1000) * 0.01)
    nodes.append(_node("Gemm", ["flatten.out", fc_w, fc_b], ["logits"], "fc", transB=1))

    # GraphProto: node 1, name 2, initializer 5, input 11, output 12.
    graph = (b"".join(_len(1, n) for n in nodes) + _len(2, "resnet50") + b"".join(_len(5, t) for t in inits)
             + _len(11, _value_info("input", ["N", 3, 224, 224])) + _len(12, _value_info("logits", ["N", 1000])))
    # ModelProto: ir_version 1 (8), producer_name 2, producer_version 3,
    # graph 7, opset_import 8 (the default domain "", version 17).
    model = (_int(1, 8) + _len(2, "highserve scripts/make_resnet50.py") + _len(3, "1") + _len(7, graph)
             + _len(8, _len(1, "") + _int(2, 17)))
    return model, params


def check(path):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    (i,), (o,) = sess.get_inputs(), sess.get_outputs()
    assert (i.name, o.name) == ("input", "logits"), (i.name, o.name)
    rng = np.random.RandomState(1)
    for n in (1, 8):
        # ImageNet-normalized noise: about what a real photo becomes.
        x = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
        y = sess.run(["logits"], {"input": x})[0]
        assert y.shape == (n, 1000) and y.dtype == np.float32, (y.shape, y.dtype)
        assert np.isfinite(y).all(), "non-finite logits"
        std = float(y.std())
        assert 1e-3 < std < 1e3, f"logits std {std}: activations blew up or vanished"
        print(f"make_resnet50: onnxruntime {ort.__version__} batch {n}: logits {y.shape}, "
              f"std {std:.3f}, top-1 of row 0: {int(y[0].argmax())}", file=sys.stderr)


def link_models(repo):
    """Links the models the benchmark serves next to resnet50 from models/:
    ppocr_cls, and the `ocr` pipeline with its three models."""
    for name in LINKED:
        src = ROOT / "models" / name
        link = repo / name
        target = os.path.relpath(src, repo)
        if not (link.is_symlink() and os.readlink(link) == target):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        if name != "ocr" and not (src / "1" / "model.onnx").exists():
            print(f"make_resnet50: models/{name}/1/model.onnx is missing: run scripts/fetch", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                    help="benchmark model repository (default .cache/models-bench)")
    ap.add_argument("--check", action="store_true", help="run it in onnxruntime at batch 1 and 8")
    ap.add_argument("--force", action="store_true", help="rebuild the model even if it is there")
    ap.add_argument("--gpu", action="store_true",
                    help="write the GPU configuration instead (batches of up to 128, 4 instances = CUDA streams)")
    args = ap.parse_args()
    ensure_python()
    repo = args.repository.resolve()
    model_dir = repo / "resnet50"
    dest = model_dir / "1" / "model.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.toml").write_text(GPU_CONFIG if args.gpu else CONFIG)
    link_models(repo)
    if args.force or not dest.exists():
        data, params = build()
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
        print(f"make_resnet50: {params / 1e6:.2f} M parameters, {len(data) / 2**20:.1f} MiB", file=sys.stderr)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    print(f"make_resnet50: {dest} sha256 {digest}", file=sys.stderr)
    print(digest)
    if args.check:
        check(dest)


if __name__ == "__main__":
    main()
