#!/usr/bin/env python3
"""Runs the OCR reference on the OCR test set; writes tests/data/ocr_reference.json.

usage: ocr_reference.py [--threads N] [--manifest FILE] [--out FILE]

The reference is rapidocr-onnxruntime 1.4.4 with its default config.yaml
(PP-OCRv4 det, mobile v2.0 cls, PP-OCRv4 rec: the same ONNX files as
highserve's ppocr_det/cls/rec), one RapidOCR instance, the image file's path
given to it, as its users call it. The only setting changed is ONNX Runtime's
intra-op thread count (--threads, default 1; 0 keeps rapidocr's default, which
lets ONNX Runtime choose), which does not change the results.

It needs the reference venv, .cache/venv-ref (rapidocr-onnxruntime and its
pinned dependencies from scripts/requirements-ref.txt, installed with --no-deps
because the package asks for the GUI opencv-python; opencv-python-headless
stands in). Create it with

    scripts/fetch --test --ref

(--test also makes the test set, .cache/ocrset/). Run with any Python: when
rapidocr_onnxruntime cannot be imported, the script starts itself again with
.cache/venv-ref/bin/python.

The output, kept small for git (coordinates rounded to integers, scores to 4
decimals):

  {"reference": "rapidocr-onnxruntime 1.4.4 (default config.yaml)",
   "onnxruntime": "1.32.0", "intra_op_num_threads": 1, ...,
   "cer": 0.0123, "errors": 12, "chars": 975, "cer_definition": "...",
   "images": [{"file": ..., "sha256": ..., "errors": 0, "chars": 52,
               "lines": [{"text": ..., "score": 0.9987, "box": [[x, y] x 4]}, ...]}, ...]}

`lines` are rapidocr's, in its order (its sorted_boxes: top to bottom, then
left to right), box corners as it gives them (tl, tr, br, bl) in original-image
pixels. The CER is defined in scripts/compare_ocr.py (and in the file).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = ROOT / ".cache" / "venv-ref" / "bin" / "python"
MANIFEST = ROOT / ".cache" / "ocrset" / "manifest.json"
OUT = ROOT / "tests" / "data" / "ocr_reference.json"

sys.dont_write_bytecode = True  # no __pycache__ in scripts/ from the imports below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_ocr import cer, image_errors  # noqa: E402

CER_DEFINITION = (
    "For each image, E = the expected lines' text joined in reading order with '\\n', R = the recognized "
    "lines' text joined the same way ('' for no lines); errors = Levenshtein distance(E, R) over Unicode code "
    "points, unit costs; chars = len(E) including the '\\n' separators. CER = sum(errors) / sum(chars) over "
    "all images. Images with no expected text add 0 chars and every recognized character as errors."
)


def die(msg):
    sys.exit(f"ocr_reference: {msg}")


def ensure_reference_python():
    """Re-executes this script with the reference venv's Python when
    rapidocr_onnxruntime is not importable here."""
    if importlib.util.find_spec("rapidocr_onnxruntime") is not None:
        return
    # (A venv's python is a link to the base one: compare prefixes, not files.)
    if REF_PYTHON.exists() and Path(sys.prefix).resolve() != REF_PYTHON.parent.parent.resolve():
        os.execv(str(REF_PYTHON), [str(REF_PYTHON), *sys.argv])
    die(f"rapidocr_onnxruntime is not installed for {sys.executable}; create the reference venv with "
        "scripts/fetch --ref (it installs scripts/requirements-ref.txt into .cache/venv-ref)")


def make_engine(threads, models=None):
    """One RapidOCR with its default config.yaml and ONNX Runtime's intra-op
    thread count set to threads for det, cls and rec (0: rapidocr's default,
    -1, which leaves the choice to ONNX Runtime). Checks that the sessions got
    it: rapidocr silently ignores counts above os.cpu_count(). With models (a
    highserve model repository), its ppocr_det/cls/rec files replace the
    package's own (to measure the reference on the same fused graphs)."""
    from rapidocr_onnxruntime import RapidOCR

    if threads < 0:
        die(f"--threads {threads}: give 1 or more, or 0 for ONNX Runtime's default")
    if threads > (os.cpu_count() or 1):
        die(f"--threads {threads} is more than the {os.cpu_count()} CPUs here, and rapidocr 1.4.4 would "
            "silently use ONNX Runtime's default instead")
    kwargs = {"intra_op_num_threads": threads} if threads else {}
    if models is not None:
        for step in ("det", "cls", "rec"):
            path = Path(models) / f"ppocr_{step}" / "1" / "model.onnx"
            if not path.is_file():
                die(f"{path} is missing (scripts/fetch puts the models there)")
            kwargs[f"{step}_model_path"] = str(path)
    engine = RapidOCR(**kwargs)
    if threads:
        sessions = {"det": engine.text_det.infer.session, "cls": engine.text_cls.infer.session,
                    "rec": engine.text_rec.session.session}
        for name, sess in sessions.items():
            got = sess.get_session_options().intra_op_num_threads
            if got != threads:
                die(f"the {name} session has intra_op_num_threads {got}, not {threads}")
    return engine


def run_engine(engine, image):
    """rapidocr on one image (a path or bytes) -> [{"text", "score", "box"}] in
    its order, box corners as floats in original-image pixels."""
    result, _ = engine(image)
    lines = []
    for box, text, score in result or []:
        lines.append({"text": text, "score": float(score), "box": [[float(x), float(y)] for x, y in box]})
    return lines


def rounded(lines):
    return [{"text": l["text"], "score": round(l["score"], 4), "box": [[round(x), round(y)] for x, y in l["box"]]}
            for l in lines]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_json(doc):
    """doc as JSON with one line per image header and per text line."""
    head = {k: v for k, v in doc.items() if k != "images"}
    out = ["{" + json.dumps(head, ensure_ascii=False)[1:-1] + ', "images": [']
    for i, img in enumerate(doc["images"]):
        h = {k: v for k, v in img.items() if k != "lines"}
        out.append(" " + json.dumps(h, ensure_ascii=False)[:-1] + ', "lines": [')
        out.extend("  " + json.dumps(line, ensure_ascii=False) + ("," if j + 1 < len(img["lines"]) else "")
                   for j, line in enumerate(img["lines"]))
        out.append(" ]}" + ("," if i + 1 < len(doc["images"]) else ""))
    out.append("]}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    ensure_reference_python()
    import onnxruntime
    from importlib.metadata import version

    if not args.manifest.exists():
        die(f"{args.manifest} is missing: run scripts/fetch --test (it makes the OCR test set)")
    manifest = json.loads(args.manifest.read_text())
    engine = make_engine(args.threads)
    images, pairs = [], []
    t0 = time.monotonic()
    for entry in manifest["images"]:
        path = args.manifest.parent / entry["file"]
        lines = rounded(run_engine(engine, str(path)))
        errors, chars = image_errors(entry["lines"], lines)
        pairs.append((entry["lines"], lines))
        images.append({"file": entry["file"], "sha256": sha256(path), "errors": errors, "chars": chars,
                       "lines": lines})
        print(f"{entry['file']:<30} {len(entry['lines'])} expected, {len(lines)} found, {errors} errors",
              file=sys.stderr)
    total, errors, chars = cer(pairs)
    doc = {
        "reference": f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')} (default config.yaml)",
        "onnxruntime": onnxruntime.__version__,
        "opencv": version("opencv-python-headless"),
        "intra_op_num_threads": args.threads if args.threads else "default",
        "inter_op_num_threads": "default",
        "test_set": "scripts/make_ocr_testset.py, seed %d" % manifest["seed"],
        "cer": round(total, 4), "errors": errors, "chars": chars,
        "cer_definition": CER_DEFINITION,
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(doc))
    print(f"ocr_reference: CER {total:.4f} ({errors} errors / {chars} chars) over {len(images)} images "
          f"in {time.monotonic() - t0:.1f} s; wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
