#!/usr/bin/env python3
"""A plain HTTP server around rapidocr-onnxruntime: the baseline for highserve's `ocr`.

usage: rapidocr_server.py [--host 127.0.0.1] [--port 8001] [--threads 1] [--ready-file FILE]
                          [--models DIR]

It is written the way users put rapidocr behind HTTP: the standard library's
ThreadingHTTPServer (a thread per connection, HTTP/1.1 keep-alive) and one
RapidOCR instance with its default config.yaml, shared by all threads (ONNX
Runtime sessions may run concurrently). --threads sets ONNX Runtime's intra-op
thread count of the det, cls and rec sessions (rapidocr's
intra_op_num_threads; 0 keeps its default, ONNX Runtime's choice). --models
DIR runs the model files of a highserve model repository (DIR/ppocr_det/1/
model.onnx, ...) instead of the package's own.

  POST /v2/models/ocr/infer   body: a JPEG or PNG image (Content-Type
                              image/jpeg, image/png, or none)
      200 {"model_name": "ocr", "model_version": "1",
           "lines": [{"text": "...", "score": 0.98,
                      "box": [[x, y], [x, y], [x, y], [x, y]]}, ...]}
      (highserve's format: lines in reading order, corners tl, tr, br, bl in
      original-image pixels; no text: "lines": [])
      400 when the body is not an image, 415 for another Content-Type
  GET /v2/health/ready        200 once the models are loaded

--port 0 picks a free port; --ready-file FILE then gets the server's URL
(http://HOST:PORT) once it listens, as highserve's run-dir/ready does. It runs
with the reference venv (.cache/venv-ref; scripts/fetch --ref makes it) and
starts itself with that venv's Python when rapidocr is not importable.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in scripts/ from the imports below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ocr_reference import ensure_reference_python, make_engine, run_engine  # noqa: E402

INFER_PATHS = {"/v2/models/ocr/infer", "/v2/models/ocr/versions/1/infer"}
IMAGE_TYPES = {"image/jpeg", "image/png", ""}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine = None  # set in main

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path in ("/v2/health/ready", "/v2/health/live"):
            self.reply(200, {})
        else:
            self.reply(404, {"error": f"no GET {self.path}"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path not in INFER_PATHS:
            self.reply(404, {"error": f"unknown path {self.path}; POST images to /v2/models/ocr/infer"})
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            self.reply(415, {"error": f"Content-Type {ctype} is not image/jpeg or image/png"})
            return
        if not body:
            self.reply(400, {"error": "empty body; send the image's bytes"})
            return
        try:
            lines = run_engine(self.engine, body)
        except Exception as e:  # rapidocr raises various types on bad images
            self.reply(400, {"error": f"cannot OCR the body: {type(e).__name__}: {e}"})
            return
        for line in lines:
            line["score"] = round(line["score"], 6)
            line["box"] = [[round(x, 2), round(y, 2)] for x, y in line["box"]]
        self.reply(200, {"model_name": "ocr", "model_version": "1", "lines": lines})

    def log_message(self, fmt, *args):
        pass  # no access log: it would cost CPU in the benchmark


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: room for many clients at once


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--models", type=Path, help="a highserve model repository whose ppocr_det/cls/rec to run")
    ap.add_argument("--ready-file", type=Path, help="write the server's URL here once it listens")
    args = ap.parse_args()
    ensure_reference_python()
    Handler.engine = make_engine(args.threads, args.models)
    server = Server((args.host, args.port), Handler)
    url = f"http://{args.host}:{server.server_address[1]}"
    print(f"rapidocr_server: listening on {url} (intra_op_num_threads {args.threads or 'default'})",
          file=sys.stderr, flush=True)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".part")
        tmp.write_text(url + "\n")
        tmp.replace(args.ready_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
