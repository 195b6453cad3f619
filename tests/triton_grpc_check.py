#!/usr/bin/env python3
"""Drives a running highserve with NVIDIA's unmodified tritonclient[grpc].

usage: triton_grpc_check.py HOST:GRPC_PORT TESTDATA_DIR DESCRIPTORS

DESCRIPTORS: the daemon's compiled .proto (a FileDescriptorSet), compared
with the client's own. The daemon runs with `--model-control-mode explicit
--load-model '*' --allow-client-shm` and the admin token in
HIGHSERVE_TEST_TOKEN. Exits non-zero (with the failing check) if any call
fails or returns something a Triton server would not.
"""

import base64
import os
import queue
import sys
import time
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

url, testdata, descriptors = sys.argv[1], sys.argv[2], sys.argv[3]
token = os.environ["HIGHSERVE_TEST_TOKEN"]
admin = {"authorization": f"Bearer {token}"}
client = grpcclient.InferenceServerClient(url=url)


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAILED: {name} {detail}")
    print(f"ok: {name}")


def fails(name, call, status, *words):
    """`call` raises with gRPC code `status` and a message holding `words`."""
    try:
        call()
    except InferenceServerException as e:
        said = e.message() or ""
        check(name, e.status() == f"StatusCode.{status}" and all(w in said for w in words), (e.status(), said))
        return
    check(name, False, "no error")


# Wire compatibility: every message, field, enum value and method the daemon
# declares is Triton's, with the same number and type.
ours = descriptor_pb2.FileDescriptorSet.FromString(open(descriptors, "rb").read())


def messages(prefix, ms):
    for m in ms:
        yield prefix + m.name, m
        yield from messages(prefix + m.name + ".", m.nested_type)


def enums(f):
    for e in f.enum_type:
        yield e.name, e
    for name, m in messages("", f.message_type):
        for e in m.enum_type:
            yield f"{name}.{e.name}", e


theirs_m, theirs_e, theirs_s = {}, {}, {}
for module in (service_pb2, model_config_pb2):
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    theirs_m.update(messages("", fdp.message_type))
    theirs_e.update(enums(fdp))
    theirs_s.update({s.name: s for s in fdp.service})
differences = []
for f in ours.file:
    check(f"package of {f.name}", f.package == "inference", f.package)
    for name, m in messages("", f.message_type):
        t = theirs_m.get(name)
        if t is None:
            differences.append(f"message {name}")
            continue
        fields = {x.name: x for x in t.field}
        for x in m.field:
            y = fields.get(x.name)
            if y is None or (x.number, x.type, x.label, x.type_name) != (y.number, y.type, y.label, y.type_name):
                differences.append(f"field {name}.{x.name}")
    for name, e in enums(f):
        values = {v.name: v.number for v in theirs_e.get(name, descriptor_pb2.EnumDescriptorProto()).value}
        differences += [f"enum value {name}.{v.name}" for v in e.value if values.get(v.name) != v.number]
    for s in f.service:
        methods = {m.name: m for m in theirs_s[s.name].method}
        for x in s.method:
            y = methods.get(x.name)
            same = y is not None and (x.input_type, x.output_type, x.client_streaming, x.server_streaming) == (
                y.input_type, y.output_type, y.client_streaming, y.server_streaming)
            if not same:
                differences.append(f"method {x.name}")
        check("every method declared", {x.name for x in s.method} == set(methods), set(methods))
check("the .proto is Triton's, field for field", not differences, differences)

check("server live", client.is_server_live())
check("server ready", client.is_server_ready())
meta = client.get_server_metadata()
check("server metadata", meta.name == "highserve" and "model_repository" in meta.extensions
      and "system_shared_memory" in meta.extensions and "cuda_shared_memory" not in meta.extensions, meta)
check("model ready", client.is_model_ready("ppocr_cls"))
check("model ready by version", client.is_model_ready("ppocr_cls", "1"))
check("unknown model is not ready", not client.is_model_ready("no_such_model"))
m = client.get_model_metadata("ppocr_cls")
check("model metadata", m.inputs[0].name == "x" and list(m.inputs[0].shape) == [-1, 3, 48, 192], m)
out_name = m.outputs[0].name
cfg = client.get_model_config("ppocr_cls").config
check("model config", cfg.max_batch_size == 32 and cfg.input[0].data_type == model_config_pb2.TYPE_FP32
      and list(cfg.input[0].dims) == [3, 48, 192] and list(cfg.dynamic_batching.preferred_batch_size) == [16, 32]
      and cfg.platform == "onnxruntime_onnx", cfg)
fails("config of an unknown model", lambda: client.get_model_config("no_such_model"), "NOT_FOUND", "ppocr_cls")
index = client.get_model_repository_index()
check("repository index", {e.name for e in index.models} >= {"ppocr_cls", "ppocr_det", "ppocr_rec", "ocr"}, index)

rng = np.random.default_rng(7)
x = rng.uniform(-1, 1, size=(2, 3, 48, 192)).astype(np.float32)


def x_input(data=x):
    inp = grpcclient.InferInput("x", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return inp


res = client.infer("ppocr_cls", [x_input()], outputs=[grpcclient.InferRequestedOutput(out_name)], request_id="g-1")
probs = res.as_numpy(out_name)
check("infer raw tensors", probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4), probs)
check("request id echoed", res.get_response().id == "g-1", res.get_response().id)
res = client.infer("ppocr_cls", [x_input()])
check("infer default outputs", np.allclose(res.as_numpy(out_name), probs, atol=1e-5))
res = client.infer("ppocr_cls", [x_input()], outputs=[grpcclient.InferRequestedOutput(out_name, class_count=1)])
top = res.as_numpy(out_name)
check("classification extension", top.shape == (2, 1) and top[0][0].decode().count(":") == 2, top)
res = client.infer("ppocr_cls", [x_input()], priority=1, timeout=10_000_000, parameters={"tag": "blue"})
check("priority, timeout and custom parameters", np.allclose(res.as_numpy(out_name), probs, atol=1e-5))

imgs = np.array([open(f"{testdata}/text_0_0.jpg", "rb").read(), open(f"{testdata}/text_0_180.jpg", "rb").read()],
                dtype=np.object_)
inp = grpcclient.InferInput("x", [2], "BYTES")
inp.set_data_from_numpy(imgs)
p = client.infer("ppocr_cls", [inp]).as_numpy(out_name)
check("BYTES image input", p.shape == (2, 2) and p[0].argmax() == 0 and p[1].argmax() == 1, p)
inp = grpcclient.InferInput("image", [1], "BYTES")
inp.set_data_from_numpy(np.array([open(f"{testdata}/text_1_0.jpg", "rb").read()], dtype=np.object_))
lines = client.infer("ocr", [inp]).as_numpy("text")
check("OCR pipeline", b"".join(lines).replace(b" ", b"") == b"Invoice2026-11-23total418.50", lines)

bad = grpcclient.InferInput("y", [1, 3, 48, 192], "FP32")
bad.set_data_from_numpy(x[:1])
fails("wrong input name", lambda: client.infer("ppocr_cls", [bad]), "INVALID_ARGUMENT", "`x`", "`y`")
fails("unknown model", lambda: client.infer("no_such_model", [x_input()]), "NOT_FOUND", "ppocr_cls")
fails("bad shape", lambda: client.infer("ppocr_cls", [x_input(np.zeros((1, 3, 96, 192), np.float32))]),
      "INVALID_ARGUMENT", "input `x` has shape [1, 3, 96, 192]")
fails("a passed deadline", lambda: client.infer("ppocr_cls", [x_input()], timeout=0), "DEADLINE_EXCEEDED")
big = x_input(rng.uniform(-1, 1, size=(32, 3, 48, 192)).astype(np.float32))
try:
    client.infer("ppocr_cls", [big], client_timeout=0.001)
except InferenceServerException as e:
    check("the client's deadline", e.status() == "StatusCode.DEADLINE_EXCEEDED", e)
res = client.infer("ppocr_cls", [x_input()])
check("served after a request that ran out of time", np.allclose(res.as_numpy(out_name), probs, atol=1e-5))

# A stream: each request answered once, with its id, whatever the order.
answers = queue.Queue()
client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), answers))
ids = [f"s{i}" for i in range(5)]
for i in ids:
    client.async_stream_infer("ppocr_cls", [x_input()], request_id=i)
client.async_stream_infer("ppocr_cls", [bad], request_id="bad")
got, errors = {}, []
for _ in range(len(ids) + 1):
    result, error = answers.get(timeout=30)
    if error is not None:
        errors.append(error.message())
    else:
        got[result.get_response().id] = result.as_numpy(out_name)
client.stop_stream()
check("stream answers by id", sorted(got) == ids and all(np.allclose(v, probs, atol=1e-5) for v in got.values()), got)
check("stream error names its request", len(errors) == 1 and errors[0].startswith("[request id: bad]"), errors)

# 22 rows at least (more with the OCR's crops, and the late request's if it
# ran): an instance records a batch's statistics after sending its answers.
deadline = time.monotonic() + 5
while True:
    stats = client.get_inference_statistics("ppocr_cls")
    if stats.model_stats[0].inference_count >= 22 or time.monotonic() > deadline:
        break
    time.sleep(0.02)
check("statistics", stats.model_stats[0].name == "ppocr_cls" and stats.model_stats[0].inference_count >= 22, stats)

# System shared memory: inputs read from a region, outputs written to one.
key_in, key_out = f"/highserve_grpc_in_{os.getpid()}", f"/highserve_grpc_out_{os.getpid()}"
h_in = shm.create_shared_memory_region("in", key_in, x.nbytes)
h_out = shm.create_shared_memory_region("out", key_out, 64)
try:
    shm.set_shared_memory_region(h_in, [x])
    client.unregister_system_shared_memory()
    client.register_system_shared_memory("in", key_in, x.nbytes)
    client.register_system_shared_memory("out", key_out, 32, offset=16)
    status = client.get_system_shared_memory_status()
    r = status.regions["in"]
    check("shm status", set(status.regions) == {"in", "out"} and (r.name, r.key, r.byte_size) == ("in", key_in, x.nbytes)
          and status.regions["out"].offset == 16, status)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_shared_memory("in", x.nbytes)
    out = grpcclient.InferRequestedOutput(out_name)
    out.set_shared_memory("out", 16)
    res = client.infer("ppocr_cls", [inp], outputs=[out])
    o = res.get_output(out_name)
    check("shm output described", o is not None and list(o.shape) == [2, 2] and o.datatype == "FP32", o)
    # The registered part starts 16 bytes into the object.
    in_region = shm.get_contents_as_numpy(h_out, np.float32, [2, 2], offset=16)
    check("infer through shm", np.allclose(in_region, probs, atol=1e-5), in_region)
    fails("register twice", lambda: client.register_system_shared_memory("in", key_in, x.nbytes),
          "INVALID_ARGUMENT", "already registered")
    fails("a key that is a path", lambda: client.register_system_shared_memory("p", "/tmp/x", 8),
          "INVALID_ARGUMENT", "not a POSIX shared-memory name")
    fails("a region past the object's end", lambda: client.register_system_shared_memory("e", key_out, 65),
          "INVALID_ARGUMENT", "past the end")
    inp.set_shared_memory("in", x.nbytes, offset=16)
    fails("an input past the region's end", lambda: client.infer("ppocr_cls", [inp]), "INVALID_ARGUMENT",
          "past the end of region `in`")
    inp.set_shared_memory("nope", x.nbytes)
    fails("an unknown region", lambda: client.infer("ppocr_cls", [inp]), "INVALID_ARGUMENT", "`nope`")
    fails("status of an unknown region", lambda: client.get_system_shared_memory_status("nope"), "NOT_FOUND")
    client.unregister_system_shared_memory("in")
    check("unregister one", set(client.get_system_shared_memory_status().regions) == {"out"})
    client.unregister_system_shared_memory()
    check("unregister all", not client.get_system_shared_memory_status().regions)
finally:
    client.unregister_system_shared_memory()
    shm.destroy_shared_memory_region(h_in)
    shm.destroy_shared_memory_region(h_out)

# No CUDA regions: none shown, unregistering is a no-op, registering fails.
check("cuda shm status", not client.get_cuda_shared_memory_status().regions)
client.unregister_cuda_shared_memory()
client.unregister_cuda_shared_memory("any")
handle = base64.b64encode(b"\0" * 64)
fails("cuda shm register", lambda: client.register_cuda_shared_memory("c", handle, 0, 64), "UNAVAILABLE",
      "CUDA", "system shared-memory")
fails("trace settings", lambda: client.get_trace_settings(), "UNIMPLEMENTED", "trace")
fails("log settings", lambda: client.get_log_settings(), "UNIMPLEMENTED", "log")

# Model control: the admin token as `authorization` metadata, as over HTTP.
fails("unload without the token", lambda: client.unload_model("ocr"), "UNAUTHENTICATED", "admin token")
fails("unload with another token", lambda: client.unload_model("ocr", headers={"authorization": "Bearer no"}),
      "UNAUTHENTICATED", "not the daemon's")
fails("a pipeline's model is held", lambda: client.unload_model("ppocr_det", headers=admin), "INVALID_ARGUMENT",
      "ocr", "unload_dependents")
client.unload_model("ocr", headers=admin)
check("unloaded", not client.is_model_ready("ocr"))
fails("infer on an unloaded model", lambda: client.infer("ocr", [x_input()]), "NOT_FOUND")
client.load_model("ocr", headers=admin)
check("loaded again", client.is_model_ready("ocr"))
client.close()
print("all tritonclient.grpc checks passed")
