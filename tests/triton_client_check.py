#!/usr/bin/env python3
"""Drives a running highserve with NVIDIA's unmodified tritonclient[http].

usage: triton_client_check.py HOST:PORT TESTDATA_DIR

Exits non-zero (with the failing check) if any call fails or returns
something a Triton server would not.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, testdata = sys.argv[1], sys.argv[2]
client = httpclient.InferenceServerClient(url=url)


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAILED: {name} {detail}")
    print(f"ok: {name}")


check("server live", client.is_server_live())
check("server ready", client.is_server_ready())
meta = client.get_server_metadata()
check("server metadata", meta["name"] == "highserve" and "binary_tensor_data" in meta["extensions"], meta)
check("model ready", client.is_model_ready("ppocr_cls"))
check("model ready by version", client.is_model_ready("ppocr_cls", "1"))
m = client.get_model_metadata("ppocr_cls")
check("model metadata", m["inputs"][0]["name"] == "x" and m["inputs"][0]["shape"] == [-1, 3, 48, 192], m)
check("unknown model is not ready", not client.is_model_ready("no_such_model"))
index = client.get_model_repository_index()
check("repository index", {e["name"] for e in index} >= {"ppocr_cls", "ppocr_det", "ppocr_rec"}, index)

rng = np.random.default_rng(7)
x = rng.uniform(-1, 1, size=(2, 3, 48, 192)).astype(np.float32)
out_name = m["outputs"][0]["name"]

# JSON tensors both ways.
inp = httpclient.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=False)
res = client.infer("ppocr_cls", [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=False)],
                   request_id="json-1")
probs_json = res.as_numpy(out_name)
check("infer JSON tensors", probs_json.shape == (2, 2) and np.allclose(probs_json.sum(axis=1), 1, atol=1e-4),
      probs_json)
check("request id echoed", res.get_response()["id"] == "json-1", res.get_response())

# Binary tensors (Inference-Header-Content-Length) both ways.
inp = httpclient.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=True)
res = client.infer("ppocr_cls", [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=True)])
probs_bin = res.as_numpy(out_name)
check("infer binary tensors", np.allclose(probs_bin, probs_json, atol=1e-5), (probs_bin, probs_json))

# No outputs requested: tritonclient asks for everything in binary.
res = client.infer("ppocr_cls", [inp])
check("infer default outputs", np.allclose(res.as_numpy(out_name), probs_json, atol=1e-5))

# Classification extension.
res = client.infer("ppocr_cls", [inp], outputs=[httpclient.InferRequestedOutput(out_name, class_count=1)])
top = res.as_numpy(out_name)
check("classification extension", top.shape == (2, 1) and top[0][0].decode().count(":") == 2, top)

# Encoded images as a BYTES input.
jpeg = open(f"{testdata}/text_0_0.jpg", "rb").read()
imgs = np.array([jpeg, open(f"{testdata}/text_0_180.jpg", "rb").read()], dtype=np.object_)
inp = httpclient.InferInput("x", [2], "BYTES")
inp.set_data_from_numpy(imgs, binary_data=True)
res = client.infer("ppocr_cls", [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=True)])
p = res.as_numpy(out_name)
check("BYTES image input", p.shape == (2, 2) and p[0].argmax() == 0 and p[1].argmax() == 1, p)

# Raw binary request (Inference-Header-Content-Length: 0): the whole body is
# the model's single input. tritonclient has no helper for it; its low-level
# post and response parser are used as a Triton user would.
one = x[:1]
resp = client._post("v2/models/ppocr_cls/infer", one.tobytes(),
                    {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}, None)
body = resp.read()
check("raw binary status", resp.status_code == 200, body)
header_len = resp.get("Inference-Header-Content-Length")
parsed = httpclient.InferenceServerClient.parse_response_body(
    body, header_length=int(header_len) if header_len else None)
check("raw binary request", np.allclose(parsed.as_numpy(out_name), probs_json[:1], atol=1e-5))
resp = client._post("v2/models/ppocr_cls/infer", jpeg, {"Inference-Header-Content-Length": "0"}, None)
body = resp.read()
check("raw binary image", resp.status_code == 200, body)

# Errors come back as InferenceServerException with the server's message.
try:
    bad = httpclient.InferInput("y", [1, 3, 48, 192], "FP32")
    bad.set_data_from_numpy(x[:1], binary_data=True)
    client.infer("ppocr_cls", [bad])
    check("wrong input name rejected", False)
except InferenceServerException as e:
    check("wrong input name rejected", "x" in str(e) and "y" in str(e), str(e))
try:
    client.infer("no_such_model", [inp])
    check("unknown model rejected", False)
except InferenceServerException as e:
    check("unknown model rejected", "ppocr_cls" in str(e), str(e))

stats = client.get_inference_statistics("ppocr_cls")
check("statistics", stats["model_stats"][0]["inference_count"] >= 7, stats)
print("all tritonclient checks passed")
