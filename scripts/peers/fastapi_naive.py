#!/usr/bin/env python3
"""Peer: FastAPI + uvicorn, the straightforward way.

usage: fastapi_naive.py --model NAME [--repository DIR] [--port 8001] [--threads 1]

What most users write first: one uvicorn process, one ONNX Runtime session
made at start-up, and an `async def` endpoint that reads the body and does
the whole request in the handler: Pillow decode, resize, normalize, one
inference of batch 1, softmax, top-k (scripts/peers/common.py, the same
steps and settings as highserve's config). The handler never awaits during
that work, so it runs on the event loop: one request at a time, one core.

  POST /v2/models/<model>/infer   body: a JPEG or PNG (Content-Type
      image/jpeg, image/png or none) → 200 {"model_name", "model_version",
      "classes": [{"index", "label", "score"}, ...]} as highserve answers;
      400 for a body that is not an image, 415 for another Content-Type
  GET /v2/health/ready, /v2/health/live   200

uvicorn with its standard extras (uvloop, httptools), no access log.
"""

import argparse
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BadImage, common_args, load_model, dumps  # noqa: E402

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402

IMAGE_TYPES = {"image/jpeg", "image/png", ""}


def make_app(model, session):
    app = FastAPI()

    def error(status, msg):
        return Response(dumps({"error": msg}), status_code=status, media_type="application/json")

    @app.get("/v2/health/ready")
    @app.get("/v2/health/live")
    async def health():
        return {}

    @app.post(f"/v2/models/{model.name}/infer")
    async def infer(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            return error(415, f"Content-Type {ctype} is not image/jpeg or image/png")
        body = await request.body()
        try:
            answer = model.run_one(session, body)
        except BadImage as e:
            return error(400, str(e))
        return Response(dumps(answer), media_type="application/json")

    return app


def main():
    ap = common_args(argparse.ArgumentParser(description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    args = ap.parse_args()
    model = load_model(args.model, args.repository, jpeg_draft=not args.no_jpeg_draft)
    session = model.session(args.threads)
    print(f"fastapi_naive: {model.name} from {model.file}, 1 session x {args.threads} intra-op thread(s)",
          file=sys.stderr, flush=True)
    uvicorn.run(make_app(model, session), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
