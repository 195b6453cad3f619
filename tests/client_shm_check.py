#!/usr/bin/env python3
"""Drives a highserve started with --allow-client-shm through Triton's system
shared-memory extension with NVIDIA's unmodified tritonclient[http] and its
shared-memory utilities.

usage: client_shm_check.py HOST:PORT

Exits non-zero (with the failing check) if any call fails or answers
something a Triton server would not.
"""

import os
import sys

import numpy as np
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

url = sys.argv[1]
client = httpclient.InferenceServerClient(url=url)
tag = f"hs{os.getpid()}"


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAILED: {name} {detail}")
    print(f"ok: {name}")


def fails(name, call, *says):
    try:
        call()
    except InferenceServerException as e:
        text = str(e)
        check(name, all(s in text for s in says), f"error {text!r} lacks {says}")
        return
    sys.exit(f"FAILED: {name}: no error")


meta = client.get_server_metadata()
check("system_shared_memory listed", "system_shared_memory" in meta["extensions"], meta)
m = client.get_model_metadata("ppocr_cls")
out_name = m["outputs"][0]["name"]

rng = np.random.default_rng(19)
x = rng.uniform(-1, 1, size=(2, 3, 48, 192)).astype(np.float32)
in_size = x.nbytes
out_size = 2 * 2 * 4  # [2, 2] FP32

# The same tensor over the socket, for comparison.
inp = httpclient.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
want = client.infer("ppocr_cls", [inp]).as_numpy(out_name)

# One object for the input (after 64 bytes of padding), one for the output.
ih = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", 64 + in_size)
oh = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", out_size)
shm.set_shared_memory_region(ih, [x], offset=64)
client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", 64 + in_size)
client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", out_size)
status = client.get_system_shared_memory_status()
names = {r["name"]: r for r in status}
check("status lists both regions", set(names) == {f"{tag}_in", f"{tag}_out"} and
      names[f"{tag}_in"]["byte_size"] == 64 + in_size, status)
one = client.get_system_shared_memory_status(f"{tag}_out")
check("status of one region", [r["name"] for r in one] == [f"{tag}_out"], one)


def shm_infer(offset=64, byte_size=in_size, region=None, out_bytes=out_size):
    i = httpclient.InferInput("x", list(x.shape), "FP32")
    i.set_shared_memory(region or f"{tag}_in", byte_size, offset=offset)
    o = httpclient.InferRequestedOutput(out_name, binary_data=True)
    o.set_shared_memory(f"{tag}_out", out_bytes)
    return client.infer("ppocr_cls", [i], outputs=[o])


res = shm_infer()
out = res.get_output(out_name)
check("the response describes the output without its data (as Triton: no data, no parameters)",
      out["shape"] == [2, 2] and "data" not in out and "parameters" not in out, out)
got = shm.get_contents_as_numpy(oh, np.float32, [2, 2])
check("inputs read from and outputs written into regions", np.allclose(got, want, atol=1e-5), (got, want))

# Mixed: input over the socket, output into a region.
o = httpclient.InferRequestedOutput(out_name)
o.set_shared_memory(f"{tag}_out", out_size)
shm.set_shared_memory_region(oh, [np.zeros((2, 2), np.float32)])
client.infer("ppocr_cls", [inp], outputs=[o])
check("socket input, region output", np.allclose(shm.get_contents_as_numpy(oh, np.float32, [2, 2]), want, atol=1e-5))

# Bad references and registrations, each named in its error.
fails("unknown region", lambda: shm_infer(region="nope"), "no shared-memory region `nope`", f"{tag}_in")
fails("offset past the end", lambda: shm_infer(offset=128), "past the end of region")
fails("size that does not match the tensor", lambda: shm_infer(byte_size=in_size - 4),
      f"shared_memory_byte_size is {in_size - 4}")
fails("output region too small", lambda: shm_infer(out_bytes=4), "at least")
fails("key with a slash", lambda: client.register_system_shared_memory("bad", "/dev/shm/x", 8),
      "not a POSIX shared-memory name")
fails("key that does not exist", lambda: client.register_system_shared_memory("bad", f"/{tag}_none", 8),
      "cannot be opened")
fails("region past the object's end", lambda: client.register_system_shared_memory("bad", f"/{tag}_out", 8, 16),
      "past the end of shared-memory object")
fails("registering twice", lambda: client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", 8),
      f"`{tag}_in` is already registered")

# An object that shrinks under the daemon fails the request, not the daemon.
sh = shm.create_shared_memory_region(f"{tag}_shrink", f"/{tag}_shrink", in_size)
client.register_system_shared_memory(f"{tag}_shrink", f"/{tag}_shrink", in_size)
os.truncate(f"/dev/shm/{tag}_shrink", 1024)
fails("shrunk object", lambda: shm_infer(offset=0, region=f"{tag}_shrink"), "shrank")
res = shm_infer()
check("the daemon serves on after a shrunk object", np.allclose(shm.get_contents_as_numpy(oh, np.float32, [2, 2]),
                                                                  want, atol=1e-5))

client.unregister_system_shared_memory(f"{tag}_shrink")
check("unregister one", {r["name"] for r in client.get_system_shared_memory_status()} == {f"{tag}_in", f"{tag}_out"})
client.unregister_system_shared_memory("never_registered")
client.unregister_system_shared_memory()
check("unregister all", client.get_system_shared_memory_status() == [])
fails("a region unregistered is gone", lambda: shm_infer(), "no shared-memory region")

check("no CUDA regions", client.get_cuda_shared_memory_status() == [])
client.unregister_cuda_shared_memory()
for h in (ih, oh, sh):
    shm.destroy_shared_memory_region(h)
print("all client shared-memory checks passed")
