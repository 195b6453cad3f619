#!/usr/bin/env python3
"""Rewrites an ONNX model so ONNX Runtime's CPU kernels do less work, without
changing what it computes beyond float rounding.

usage: fuse_onnx.py IN.onnx OUT.onnx

PaddlePaddle exports (the PP-OCR models among them) spell out, one node at a
time, things ONNX Runtime can do inside a convolution or in one kernel. On the
PP-OCRv4 detector with one thread, the element-wise Add/Mul/Clip/Div nodes
this leaves took 43% of the time and their NCHWc layout reorders another 14%;
convolutions only 35%. Three rewrites, each exact in real arithmetic:

  affine-into-conv   Conv -> Mul(c) -> Add(c), the scale and bias of a
                     "learnable affine block" (or any per-output-channel
                     constant Mul/Add chain the conv alone feeds) folded into
                     the conv's weights and bias.
  hard-swish         x -> Add(3) -> Clip(0, 6) -> Mul(x, .) -> Div(6) becomes
                     one HardSwish node (opset 14; older models are converted
                     with onnx.version_converter first), which ONNX Runtime
                     fuses into the preceding convolution.
  affine-into-1x1    t -> Mul(c) -> Add(c) feeding only 1x1 unpadded
                     ungrouped convolutions folded into those convolutions'
                     weights (scale per input channel) and bias (the sum of
                     weights times the added constant). Not done before padded
                     convolutions: their zero padding would then stand for
                     -c/scale, not 0, at the borders.

Folded constants are computed in float64 and rounded once to float32. The
shapes the opset conversion infers (value_info) are dropped, as the original
files have none. On
PP-OCRv4 (onnxruntime 1.32, 1 thread, this repo's OCR test images) the
detector's probability map moves by at most 4e-5 and no pixel crosses the 0.3
threshold; detection takes 26% less time, recognition 31%, the orientation
classifier 39%. Metadata (the recognizer's `character` list) is kept.

Needs the `onnx` and `numpy` packages (scripts/fetch runs it from the
.cache/venv-tools venv, scripts/requirements-tools.txt). The output is
deterministic for a given input and package versions.
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

HARD_SWISH_OPSET = 14


class Graph:
    """The main graph as a plain list of nodes, with producer/consumer maps
    rebuilt after each rewrite (models here have a few hundred nodes)."""

    def __init__(self, model):
        self.model = model
        self.g = model.graph
        self.nodes = list(self.g.node)
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.graph_outputs = {o.name for o in self.g.output}
        self.index()

    def index(self):
        self.consumers = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name):
        return self.consts.get(name)

    def sole_consumer(self, tensor):
        c = self.consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in self.graph_outputs else None

    def set_initializer(self, name, array):
        array = np.ascontiguousarray(array.astype(np.float32))
        self.consts[name] = array
        self.g.initializer.append(numpy_helper.from_array(array, name))

    def finish(self):
        used = {i for n in self.nodes for i in n.input} | self.graph_outputs
        keep = [n for n in self.nodes if n.op_type != "Constant" or n.output[0] in used]
        del self.g.node[:]
        self.g.node.extend(keep)
        inits = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)


def scalar(array, value):
    return array is not None and array.size == 1 and float(array.reshape(-1)[0]) == value


def per_channel(array, channels):
    """`array` as a vector over NCHW channels, if it broadcasts only over them."""
    if array is None or array.dtype != np.float32:
        return None
    if array.size == 1:
        return np.full(channels, float(array.reshape(-1)[0]))
    dims = [d for d in array.shape]
    # Broadcast against [N, C, H, W]: channel axis is -3.
    if array.size == channels and len(dims) >= 3 and dims[-3] == channels and dims[-1] == 1 and dims[-2] == 1:
        return array.reshape(-1).astype(np.float64)
    return None


def other_input(node, tensor):
    a, b = node.input
    return b if a == tensor else a


def conv_bias(graph, conv, out_channels):
    if len(conv.input) > 2 and conv.input[2]:
        b = graph.const(conv.input[2])
        return None if b is None else b.astype(np.float64)
    return np.zeros(out_channels)


def set_conv_params(graph, conv, weight, bias, tag):
    name = f"{conv.output[0]}_{tag}"
    graph.set_initializer(name + "_w", weight)
    graph.set_initializer(name + "_b", bias)
    conv.input[1] = name + "_w"
    if len(conv.input) > 2:
        conv.input[2] = name + "_b"
    else:
        conv.input.append(name + "_b")


def affine_into_conv(graph):
    folded = 0
    for conv in [n for n in graph.nodes if n.op_type == "Conv"]:
        w = graph.const(conv.input[1])
        if w is None or w.dtype != np.float32:
            continue
        out_channels = w.shape[0]
        b = conv_bias(graph, conv, out_channels)
        if b is None:
            continue
        w = w.astype(np.float64)
        steps = 0
        while True:
            nxt = graph.sole_consumer(conv.output[0])
            if nxt is None or nxt.op_type not in ("Mul", "Add") or len(nxt.input) != 2:
                break
            k = per_channel(graph.const(other_input(nxt, conv.output[0])), out_channels)
            if k is None:
                break
            if nxt.op_type == "Mul":
                w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
                b = b * k
            else:
                b = b + k
            conv.output[0] = nxt.output[0]
            graph.nodes.remove(nxt)
            graph.index()
            steps += 1
        if steps:
            set_conv_params(graph, conv, w, b, "affine")
            folded += steps
    return folded


def hard_swish(graph):
    fused = 0
    for add in [n for n in graph.nodes if n.op_type == "Add"]:
        if add not in graph.nodes or len(add.input) != 2 or not scalar(graph.const(add.input[1]), 3.0):
            continue
        x = add.input[0]
        clip = graph.sole_consumer(add.output[0])
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3:
            continue
        if not (scalar(graph.const(clip.input[1]), 0.0) and scalar(graph.const(clip.input[2]), 6.0)):
            continue
        mul = graph.sole_consumer(clip.output[0])
        if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
            continue
        div = graph.sole_consumer(mul.output[0])
        if div is None or not (
            (div.op_type == "Div" and scalar(graph.const(div.input[1]), 6.0))
            or (div.op_type == "Mul" and scalar(graph.const(other_input(div, mul.output[0])), np.float32(1 / 6)))
        ):
            continue
        node = helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.output[0]}_hardswish")
        at = graph.nodes.index(div)
        graph.nodes[at] = node
        for n in (add, clip, mul):
            graph.nodes.remove(n)
        graph.index()
        fused += 1
    return fused


def is_plain_1x1(graph, conv):
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    w = graph.const(conv.input[1])
    return (
        w is not None
        and w.dtype == np.float32
        and w.ndim == 4
        and w.shape[2:] == (1, 1)
        and attrs.get("group", 1) == 1
        and not any(attrs.get("pads", []))
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
    )


def affine_chain(graph, first):
    """`t -> Mul(c) -> Add(c)` (or just one of them) starting at first: the
    input tensor t and the nodes, or (None, [])."""
    chain, node = [], first
    for want in ("Mul", "Add"):
        if node is None or node.op_type != want or len(node.input) != 2:
            continue
        consts = [i for i in node.input if graph.const(i) is not None]
        if len(consts) != 1 or (chain and other_input(node, consts[0]) != chain[-1].output[0]):
            break
        chain.append(node)
        node = graph.sole_consumer(node.output[0])
    if not chain:
        return None, []
    tensor = other_input(chain[0], next(i for i in chain[0].input if graph.const(i) is not None))
    return (None, []) if tensor in graph.consts else (tensor, chain)


def affine_into_1x1(graph):
    folded = 0
    for first in [n for n in graph.nodes if n.op_type in ("Mul", "Add")]:
        if first not in graph.nodes:
            continue
        tensor, chain = affine_chain(graph, first)
        if tensor is None:
            continue
        out = chain[-1].output[0]
        convs = graph.consumers.get(out, [])
        if out in graph.graph_outputs or not convs:
            continue
        if not all(c.op_type == "Conv" and c.input[0] == out and out not in c.input[1:] for c in convs):
            continue
        if not all(is_plain_1x1(graph, c) for c in convs):
            continue
        in_channels = graph.const(convs[0].input[1]).shape[1]
        if any(graph.const(c.input[1]).shape[1] != in_channels for c in convs):
            continue
        biases = [conv_bias(graph, c, graph.const(c.input[1]).shape[0]) for c in convs]
        ks = [per_channel(graph.const(next(i for i in n.input if graph.const(i) is not None)), in_channels)
              for n in chain]
        if any(b is None for b in biases) or any(k is None for k in ks):
            continue
        scale, shift = np.ones(in_channels), np.zeros(in_channels)
        for n, k in zip(chain, ks):
            if n.op_type == "Mul":
                scale, shift = scale * k, shift * k
            else:
                shift = shift + k
        for c, b in zip(convs, biases):
            w = graph.const(c.input[1]).astype(np.float64)
            b = b + (w[:, :, 0, 0] @ shift)
            w = w * scale.reshape(1, -1, 1, 1)
            c.input[0] = tensor
            set_conv_params(graph, c, w, b, "inaffine")
        for n in chain:
            graph.nodes.remove(n)
        graph.index()
        folded += len(chain)
    return folded


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    model = onnx.load(src)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < HARD_SWISH_OPSET:
        model = version_converter.convert_version(model, HARD_SWISH_OPSET)
    graph = Graph(model)
    counts = {
        "affine-into-conv": affine_into_conv(graph),
        "hard-swish": hard_swish(graph),
        "affine-into-1x1": affine_into_1x1(graph),
    }
    graph.finish()
    # The version converter infers shapes into value_info, naming dims with the
    # input's symbols; runtimes that take those as facts (tract) then cannot
    # specialize the graph to a concrete input shape. The original files carry
    # none; runtimes infer shapes themselves.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    print(
        f"fuse_onnx: {src} -> {dst}: opset {opset} -> {max(opset, HARD_SWISH_OPSET)}, "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
