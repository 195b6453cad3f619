#!/usr/bin/env python3
"""Peer: FastAPI with a thread pool and one ONNX Runtime thread per request.

usage: fastapi_tuned.py --model NAME [--repository DIR] [--port 8001]
                        [--threads 1] [--pool N]

The honest best FastAPI deployment on a small CPU machine: the event loop
only reads bodies and writes answers; each request's work (Pillow decode,
resize, normalize, one inference of batch 1, softmax, top-k; the same steps
and settings as highserve's config, scripts/peers/common.py) runs in
Starlette's thread pool via run_in_threadpool, which is capped at --pool
threads (default: one per core). Each pool thread has its own ONNX Runtime
session with --threads intra-op threads (default 1), so N cores run N
requests at once: Pillow, numpy and ONNX Runtime release the GIL for their
heavy parts. The sessions are made at start-up. No batching (one request, one inference).

Same HTTP contract as fastapi_naive.py (POST /v2/models/<model>/infer with
an image body; GET /v2/health/ready). uvicorn with uvloop and httptools, one
process, no access log.
"""

import argparse
import sys
import queue
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BadImage, common_args, load_model, cores, dumps  # noqa: E402

import anyio.to_thread  # noqa: E402
import uvicorn  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

IMAGE_TYPES = {"image/jpeg", "image/png", ""}


def make_app(model, threads, pool):
    # One session per pool thread, made at start-up: a thread takes a free
    # one for the request (there always is one: at most `pool` threads run).
    sessions = queue.SimpleQueue()
    for _ in range(pool):
        sessions.put(model.session(threads))

    def work(body):
        s = sessions.get()
        try:
            return model.run_one(s, body)
        finally:
            sessions.put(s)

    @asynccontextmanager
    async def lifespan(app):
        # Starlette's run_in_threadpool uses anyio's default limiter.
        anyio.to_thread.current_default_thread_limiter().total_tokens = pool
        yield

    app = FastAPI(lifespan=lifespan)

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
            answer = await run_in_threadpool(work, body)
        except BadImage as e:
            return error(400, str(e))
        return Response(dumps(answer), media_type="application/json")

    return app


def main():
    ap = common_args(argparse.ArgumentParser(description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--pool", type=int, default=cores(), help="thread pool size (default: cores)")
    args = ap.parse_args()
    model = load_model(args.model, args.repository, jpeg_draft=not args.no_jpeg_draft)
    print(f"fastapi_tuned: {model.name} from {model.file}, pool of {args.pool} threads, a session each with "
          f"{args.threads} intra-op thread(s)", file=sys.stderr, flush=True)
    uvicorn.run(make_app(model, args.threads, args.pool), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
