#!/usr/bin/env python3
"""Peer: Seldon MLServer with a custom runtime and adaptive batching.

usage: mlserver_runtime.py --model NAME [--repository DIR] [--port 8001]
                           [--threads 1] [--workers N] [--max-batch-size N]
                           [--batch-timeout-ms MS] [--run-dir DIR]
       mlserver_runtime.py --model NAME --make-request IMAGE OUT.json

Run as a program, it writes an MLServer settings.json and
model-settings.json into --run-dir (default: a new temporary directory) and
runs `mlserver start` on it, with this file's ImageClassifierRuntime (an
mlserver.MLModel subclass) as the model's implementation:

  settings.json        parallel_workers = --workers (default: one per
                       core): MLServer's inference pool, that many worker
                       processes each loading the model (one ONNX Runtime
                       session of --threads intra-op threads, default 1);
                       debug off (no access log); metrics off; REST on
                       127.0.0.1:--port, gRPC on a free port (unused)
  model-settings.json  max_batch_size / max_batch_time (adaptive batching,
                       in the main process, before the pool): defaults the
                       model config's max_batch_size and
                       max_queue_delay_microseconds, highserve's settings

MLServer speaks the v2 (Open Inference) protocol only, so the image travels
as it does for MLServer users: a v2 JSON request whose one input is a BYTES
tensor of shape [1] holding the base64 of the JPEG
(parameters.content_type "base64"), POSTed to /v2/models/<model>/infer.
`--make-request IMAGE OUT.json [IMAGE OUT.json ...]` writes that request for each image and exits
(.cache/venv-peers will do: it does not need mlserver);
`highserve bench --file OUT.json` (Content-Type application/json) sends it.
predict() decodes the base64, then does what highserve does (Pillow decode,
resize, normalize, one ONNX Runtime run for the whole adaptive batch,
softmax, top-k: scripts/peers/common.py) and answers three outputs per
image: `index` INT64 [1, k], `score` FP32 [1, k] and `label` BYTES [1, k]
(the top-k classes, best first). GET /v2/health/ready is MLServer's.
For `ocr` it runs rapidocr (common.py's OcrModel) on the request's one
image and answers highserve's v2 outputs: `text` BYTES [n], `score` FP32
[n] and `box` FP32 [n, 4, 2]; max_batch_size is 1 (rapidocr takes one image
at a time).
"""

import argparse
import base64
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import BadImage, common_args, load_model, cores  # noqa: E402


def v2_request(image_bytes):
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(image_bytes).decode()]}]}


try:
    import numpy as np
    from mlserver import MLModel
    from mlserver.errors import MLServerError
    from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
except ImportError:  # --make-request needs none of it
    MLModel = object


class ImageClassifierRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.m = load_model(extra["model"], extra["repository"], jpeg_draft=extra["jpeg_draft"])
        self.session = self.m.session(int(extra["threads"]))
        return True

    async def predict(self, payload: "InferenceRequest") -> "InferenceResponse":
        inp = payload.inputs[0]
        data = inp.data.root if hasattr(inp.data, "root") else inp.data
        if self.m.kind == "ocr":
            return self.predict_ocr(data)
        try:
            images = [base64.b64decode(d) for d in data]
            x = np.stack([self.m.preprocess(d) for d in images])
        except (BadImage, ValueError) as e:
            raise MLServerError(f"bad image input: {e}", status_code=400) from None
        y = self.m.infer(self.session, x)
        rows = [self.m.classes(r) for r in y]
        n, k = len(rows), len(rows[0]) if rows else 0
        flat = [c for row in rows for c in row]
        return InferenceResponse(
            model_name=self.name, model_version=self.version,
            outputs=[
                ResponseOutput(name="index", datatype="INT64", shape=[n, k], data=[c["index"] for c in flat]),
                ResponseOutput(name="score", datatype="FP32", shape=[n, k], data=[c["score"] for c in flat]),
                ResponseOutput(name="label", datatype="BYTES", shape=[n, k], data=[c["label"] for c in flat]),
            ])


    def predict_ocr(self, data):
        """One image (a BYTES [1] input, as highserve's `ocr` takes) → its
        lines as highserve's v2 outputs: text BYTES [n], score FP32 [n],
        box FP32 [n, 4, 2]."""
        if len(data) != 1:
            raise MLServerError(f"ocr takes one image per request, got {len(data)}", status_code=400)
        try:
            image = self.m.preprocess(base64.b64decode(data[0]))
        except (BadImage, ValueError) as e:
            raise MLServerError(f"bad image input: {e}", status_code=400) from None
        lines = self.m.lines(self.session, image)
        n = len(lines)
        return InferenceResponse(
            model_name=self.name, model_version=self.version,
            outputs=[
                ResponseOutput(name="text", datatype="BYTES", shape=[n], data=[l["text"] for l in lines]),
                ResponseOutput(name="score", datatype="FP32", shape=[n], data=[l["score"] for l in lines]),
                ResponseOutput(name="box", datatype="FP32", shape=[n, 4, 2],
                               data=[v for l in lines for corner in l["box"] for v in corner]),
            ])


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main():
    ap = common_args(argparse.ArgumentParser(description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--workers", type=int, default=cores(), help="parallel_workers (default: cores)")
    ap.add_argument("--max-batch-size", type=int, help="default: the model config's max_batch_size")
    ap.add_argument("--batch-timeout-ms", type=float,
                    help="max_batch_time; default: the model config's max_queue_delay_microseconds")
    ap.add_argument("--run-dir", type=Path, help="where to write the MLServer settings (default: a new "
                    "temporary directory)")
    ap.add_argument("--make-request", nargs="+", metavar="IMAGE OUT", type=Path,
                    help="write the v2 JSON request for IMAGE to OUT (pairs, repeated) and exit")
    args = ap.parse_args()
    if args.make_request:
        if len(args.make_request) % 2:
            ap.error("--make-request takes pairs: IMAGE OUT [IMAGE OUT ...]")
        pairs = args.make_request
        for image, out in zip(pairs[::2], pairs[1::2]):
            out.write_text(json.dumps(v2_request(image.read_bytes())))
        return
    model = load_model(args.model, args.repository)  # reads the config; checks the files are there
    max_batch = args.max_batch_size or max(model.max_batch_size, 1)
    timeout_s = args.batch_timeout_ms / 1e3 if args.batch_timeout_ms is not None else model.max_queue_delay_s
    run = args.run_dir or Path(tempfile.mkdtemp(prefix="peer-mlserver-"))
    run.mkdir(parents=True, exist_ok=True)
    (run / "settings.json").write_text(json.dumps({
        "debug": False, "host": args.host, "http_port": args.port, "grpc_port": free_port(args.host),
        "metrics_endpoint": None, "parallel_workers": args.workers, "load_models_at_startup": True,
    }, indent=1))
    (run / "model-settings.json").write_text(json.dumps({
        "name": args.model, "implementation": "mlserver_runtime.ImageClassifierRuntime",
        "max_batch_size": max_batch, "max_batch_time": timeout_s,
        "parameters": {"version": model.version, "extra": {
            "model": args.model, "repository": str(args.repository.resolve()), "threads": args.threads,
            "jpeg_draft": not args.no_jpeg_draft}},
    }, indent=1))
    print(f"mlserver_runtime: {model.name} from {model.file}, {args.workers} parallel workers x 1 session x "
          f"{args.threads} intra-op thread(s), max batch {max_batch}, max batch time {timeout_s * 1e3:g} ms, "
          f"settings in {run}", file=sys.stderr, flush=True)
    # The worker processes import this module by name: put it on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execv(str(mlserver), [str(mlserver), "start", str(run)])


if __name__ == "__main__":
    main()
