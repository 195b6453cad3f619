#!/usr/bin/env python3
"""What the machine can do without any server: the limits the servers are
measured against (scripts/side_by_side runs it; the answer is JSON on stdout).

usage: engine_limit.py cost --model NAME --image FILE [--seconds S] [--batch B]
       engine_limit.py ort --model NAME --image FILE [--seconds S] [--batches 1,2,4,8,16]

cost  The CPU one image costs, in one Python thread, doing exactly what the
      peers do (scripts/peers/common.py): Pillow decode (DCT-scaled like
      highserve), resize + normalize, and the model in ONNX Runtime with one
      intra-op thread at batch 1 and at batch B (default: the model config's
      largest preferred batch size, else max_batch_size, at most 16). Thread
      CPU time (ONNX Runtime with one intra-op thread computes in the
      calling thread), each step repeated for about S seconds (default 2).
      The ceiling is cores / (decode + preprocess + model per image): the
      most images per second the machine could serve if nothing else cost
      anything, with the model at batch 1 and at batch B.

ort   ONNX Runtime alone, images per second, on the image's own tensor
      repeated to each batch size: 2 sessions x 1 intra-op thread (one
      Python thread per session, each running its session in a loop;
      ONNX Runtime releases the GIL) and 1 session x 2 threads (one loop),
      for each batch size (default 1,2,4,8,16), each point about S seconds
      (default 3) after one untimed run. Generalized to the machine: N
      sessions x 1 thread and 1 session x N threads for N cores.
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_REPOSITORY, Model, cores  # noqa: E402

import numpy as np  # noqa: E402


def repeat_cpu(fn, seconds, min_runs=3):
    """Mean thread-CPU and wall seconds of fn() over about `seconds` of wall time."""
    fn()  # untimed: first-run allocations, caches
    n, c0, t0 = 0, time.thread_time(), time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.thread_time() - c0) / n, (time.perf_counter() - t0) / n


def default_batch(model):
    pref = (model.config.get("dynamic_batching") or {}).get("preferred_batch_size") or []
    b = max(pref) if pref else model.max_batch_size
    return max(1, min(b or 1, 16))


def cost(args):
    model = Model(args.model, args.repository)
    data = args.image.read_bytes()
    session = model.session(1)
    batch = args.batch or default_batch(model)
    if args.model_only:
        xb = np.repeat(model.preprocess(data)[None], batch, axis=0)
        mb_cpu, _ = repeat_cpu(lambda: model.infer(session, xb), args.seconds)
        return {"model": args.model, "batch": batch, "model_per_image_at_batch_ms": mb_cpu / batch * 1e3}
    decode_cpu, decode_wall = repeat_cpu(lambda: model.decode(data), args.seconds)
    im = model.decode(data)
    pre_cpu, _ = repeat_cpu(lambda: model.tensor(im), args.seconds)
    x = model.preprocess(data)
    x1, xb = x[None], np.repeat(x[None], batch, axis=0)
    m1_cpu, m1_wall = repeat_cpu(lambda: model.infer(session, x1), args.seconds)
    mb_cpu, mb_wall = repeat_cpu(lambda: model.infer(session, xb), args.seconds)
    row = model.infer(session, x1)[0]
    post_cpu, _ = repeat_cpu(lambda: model.answer(row), min(args.seconds, 0.5))
    n = cores()
    per_b1 = decode_cpu + pre_cpu + m1_cpu + post_cpu
    per_bb = decode_cpu + pre_cpu + mb_cpu / batch + post_cpu
    return {
        "model": args.model, "image": args.image.name, "cores": n, "batch": batch,
        "decode_ms": decode_cpu * 1e3, "preprocess_ms": pre_cpu * 1e3, "postprocess_ms": post_cpu * 1e3,
        "model_b1_ms": m1_cpu * 1e3, "model_per_image_at_batch_ms": mb_cpu / batch * 1e3,
        "cpu_per_image_b1_ms": per_b1 * 1e3, "cpu_per_image_batched_ms": per_bb * 1e3,
        "ceiling_b1_per_s": n / per_b1, "ceiling_batched_per_s": n / per_bb,
        "model_b1_wall_ms": m1_wall * 1e3, "model_batch_wall_ms": mb_wall * 1e3,
    }


def ort_point(sessions, model, x, seconds):
    """Images per second with one Python thread per session, each looping."""
    for s in sessions:
        model.infer(s, x)
    counts = [0] * len(sessions)
    start = threading.Barrier(len(sessions) + 1)
    stop_at = [0.0]

    def loop(i, s):
        start.wait()
        while time.perf_counter() < stop_at[0]:
            model.infer(s, x)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i, s)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # ends with each loop's last run
    return sum(counts) * x.shape[0] / wall


def ort(args):
    model = Model(args.model, args.repository)
    n = cores()
    x = model.preprocess(args.image.read_bytes())[None]
    batches = [int(b) for b in args.batches.split(",")]
    makers = {f"{n} sessions x 1 thread": lambda: [model.session(1) for _ in range(n)],
              f"1 session x {n} threads": lambda: [model.session(n)]}
    if args.config:
        if args.config not in makers:
            sys.exit(f"engine_limit: --config {args.config!r}; accepted: {', '.join(map(repr, makers))}")
        makers = {args.config: makers[args.config]}
    configs = {name: make() for name, make in makers.items()}
    points = []
    for name, sessions in configs.items():
        for b in batches:
            ips = ort_point(sessions, model, np.repeat(x, b, axis=0), args.seconds)
            points.append({"config": name, "batch": b, "images_per_s": ips})
            print(f"engine_limit: {args.model} {name}, batch {b}: {ips:.1f} images/s", file=sys.stderr, flush=True)
    best = max(points, key=lambda p: p["images_per_s"])
    return {"model": args.model, "image": args.image.name, "cores": n, "points": points, "best": best}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cost", "ort"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--seconds", type=float, help="seconds per measurement (cost: 2, ort: 3)")
    ap.add_argument("--batch", type=int, help="cost: the batch size for the batched model figure")
    ap.add_argument("--batches", default="1,2,4,8,16", help="ort: batch sizes (default 1,2,4,8,16)")
    ap.add_argument("--config", help="ort: only this configuration (e.g. '2 sessions x 1 thread')")
    ap.add_argument("--model-only", action="store_true", help="cost: only the model's time per image at the batch")
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 2.0 if args.what == "cost" else 3.0
    out = cost(args) if args.what == "cost" else ort(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
