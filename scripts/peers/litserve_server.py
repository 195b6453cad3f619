#!/usr/bin/env python3
"""Peer: LitServe with batching.

usage: litserve_server.py --model NAME [--repository DIR] [--port 8001]
                          [--threads 1] [--workers N] [--max-batch-size N]
                          [--batch-timeout-ms MS]

A LitAPI as LitServe's documentation writes one: decode_request (Pillow
decode, resize, normalize: scripts/peers/common.py, the same steps and
settings as highserve's config), batch (numpy stack), predict (one ONNX
Runtime run over the batch), unbatch, encode_response (softmax, top-k,
highserve's JSON). LitServe runs --workers inference worker processes
(default: one per core; accelerator "cpu"), each with one ONNX Runtime
session of --threads intra-op threads (default 1), and as many HTTP API
server processes (its default, num_api_servers = workers); requests go from
the API servers to the workers through LitServe's queues. A worker gathers
up to --max-batch-size requests, waiting at most --batch-timeout-ms
(defaults: the model config's max_batch_size and
max_queue_delay_microseconds, highserve's settings) and calls
decode_request on each, then predict once.

The image arrives as the raw request body: decode_request's parameter is
annotated `Annotated[bytes, Body(media_type="image/jpeg")]`, which LitServe
hands to FastAPI as the endpoint's body type, so FastAPI passes the body
bytes through unchanged (for any Content-Type but JSON). Same HTTP contract
as the FastAPI peers: POST /v2/models/<model>/infer with an image body →
highserve's classification JSON; GET /v2/health/ready is LitServe's health
check (200 once every worker has run setup).

For `ocr` the same LitAPI runs rapidocr (common.py's OcrModel):
decode_request decodes the image, predict runs rapidocr on it, and
encode_response answers highserve's `lines` JSON; its max_batch_size is 1
(rapidocr takes one image at a time), so LitServe's workers run one request
each at a time.
"""

import argparse
import sys
from pathlib import Path
from typing import Annotated

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BadImage, common_args, load_model, cores  # noqa: E402

import litserve as ls  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import Body, HTTPException  # noqa: E402


class ImageClassifier(ls.LitAPI):
    def __init__(self, model, repository, threads, jpeg_draft, **kwargs):
        super().__init__(**kwargs)
        # Plain values only: the API object is sent to the worker processes.
        self.model_name, self.repository, self.threads, self.jpeg_draft = model, repository, threads, jpeg_draft

    def setup(self, device):
        self.model = load_model(self.model_name, self.repository, jpeg_draft=self.jpeg_draft)
        self.session = self.model.session(self.threads)

    def decode_request(self, request: Annotated[bytes, Body(media_type="image/jpeg")]):
        try:
            return self.model.preprocess(request)
        except BadImage as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        if self.model.kind == "ocr":  # max_batch_size 1: one decoded image
            return self.model.lines(self.session, x)
        if x.ndim == 3:  # max_batch_size 1: LitServe does not call batch()
            return self.model.infer(self.session, x[None])[0]
        return self.model.infer(self.session, x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        if self.model.kind == "ocr":
            return self.model.answer_lines(output)
        return self.model.answer(output)


def main():
    ap = common_args(argparse.ArgumentParser(description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--workers", type=int, default=cores(), help="inference worker processes (default: cores)")
    ap.add_argument("--max-batch-size", type=int, help="default: the model config's max_batch_size")
    ap.add_argument("--batch-timeout-ms", type=float,
                    help="default: the model config's max_queue_delay_microseconds")
    args = ap.parse_args()
    model = load_model(args.model, args.repository)  # reads the config; checks the files are there
    max_batch = args.max_batch_size or max(model.max_batch_size, 1)
    timeout_s = args.batch_timeout_ms / 1e3 if args.batch_timeout_ms is not None else model.max_queue_delay_s
    api = ImageClassifier(args.model, str(args.repository), args.threads, not args.no_jpeg_draft,
                          max_batch_size=max_batch, batch_timeout=timeout_s,
                          api_path=f"/v2/models/{args.model}/infer")
    print(f"litserve_server: {model.name} from {model.file}, {args.workers} workers x 1 session x "
          f"{args.threads} intra-op thread(s), max batch {max_batch}, batch timeout {timeout_s * 1e3:g} ms",
          file=sys.stderr, flush=True)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers,
                          healthcheck_path="/v2/health/ready", timeout=60)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
