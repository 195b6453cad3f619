"""What every peer server shares: the model's highserve config, the image
preprocessing, the ONNX Runtime session and the classification answer.

Each peer does the work highserve does for an image POST, defined by the
same `config.toml` the daemon reads (models/<name>/config.toml, or the
benchmark repository .cache/models-bench made by scripts/make_resnet50.py):

  decode   Pillow (what Python users reach for; its JPEG decoder is
           libjpeg-turbo, as highserve's). With `jpeg_draft` (the default, as
           highserve's [preproc] jpeg_dct_scaling = true) a JPEG is decoded at
           1/2, 1/4 or 1/8 scale when the model input is that much smaller
           (Pillow's Image.draft: the same libjpeg DCT scaling).
  resize   Pillow's BILINEAR (a convolution whose support grows with the
           downscale factor: the same filter as highserve's
           fast_image_resize Convolution(Bilinear)); `fit_height_pad_right`,
           `stretch` or `center_crop` as the config says.
  tensor   (pixel * scale - mean[c]) / std[c] in float32, channel order and
           layout from the config, padding with pad_value: numpy.
  model    ONNX Runtime, intra_op_num_threads from the caller (1 unless
           stated), inter_op 1, sequential, all graph optimizations, no
           spinning, no memory pattern: highserve's session options.
  answer   softmax if the config says so, top-k (ties: lower index first),
           labels; {"model_name", "model_version", "classes": [{"index",
           "label", "score"}]} as highserve answers.

`ocr` (highserve's OCR pipeline) is served by every peer the way Python
users serve OCR: rapidocr-onnxruntime 1.4.4, the package highserve's PP-OCR
models and processing come from (OcrModel, below), running the same model
files as highserve (the repository's ppocr_det, ppocr_cls and ppocr_rec) with
the same intra-op threads, and answering highserve's `lines` JSON.

Only standard library, numpy, Pillow and onnxruntime are imported here at
start-up; rapidocr (with OpenCV) only when an `ocr` peer starts.
"""

import io
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ROOT / "scripts"
DEFAULT_REPOSITORY = ROOT / ".cache" / "models-bench"


class BadImage(ValueError):
    """The body is not an image Pillow can decode."""


class Model:
    """One model of a highserve repository: config, file, and what to do
    with an image. Thread-safe except for `session()`, which makes a new
    ONNX Runtime session each call (keep one per thread or share one: ORT's
    Run is thread-safe)."""

    kind = "classification"

    def __init__(self, name, repository=DEFAULT_REPOSITORY, jpeg_draft=True):
        self.name = name
        self.dir = Path(repository) / name
        cfg_path = self.dir / "config.toml"
        if not cfg_path.exists():
            raise SystemExit(f"{cfg_path} is missing (scripts/make_resnet50.py makes the benchmark repository)")
        self.config = tomllib.loads(cfg_path.read_text())
        versions = sorted((int(p.name), p) for p in self.dir.iterdir()
                          if p.name.isdigit() and (p / "model.onnx").exists())
        if not versions:
            raise SystemExit(f"{self.dir} has no <version>/model.onnx")
        self.version = str(versions[-1][0])
        self.file = versions[-1][1] / "model.onnx"
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        batching = self.config.get("dynamic_batching") or {}
        self.max_queue_delay_s = batching.get("max_queue_delay_microseconds", 0) / 1e6
        self.instances = int(self.config.get("instances", 1))
        self.intra_op_threads = self.config.get("intra_op_threads")  # None: the daemon's default (1)
        pre = self.config.get("preprocess")
        post = self.config.get("postprocess")
        if not pre or not post or post.get("kind") != "classification":
            raise SystemExit(f"{self.name}: the peers serve image classifiers ([preprocess] and "
                             "[postprocess] kind = \"classification\")")
        inputs = self.config["input"]
        outputs = self.config["output"]
        self.input_name = pre.get("input") or inputs[0]["name"]
        self.output_name = post.get("output") or outputs[0]["name"]
        self.resize = pre.get("resize", "stretch")
        self.width, self.height = int(pre["width"]), int(pre["height"])
        self.resize_shorter = int(pre.get("resize_shorter") or round(256 / 224 * max(self.width, self.height)))
        self.bgr = pre.get("channel_order", "RGB").upper() == "BGR"
        self.nchw = pre.get("layout", "NCHW").upper() == "NCHW"
        self.scale = np.float32(pre.get("scale", 1 / 255))
        self.mean = np.array(pre.get("mean", [0, 0, 0]), dtype=np.float32)
        self.std = np.array(pre.get("std", [1, 1, 1]), dtype=np.float32)
        self.pad_value = np.float32(pre.get("pad_value", 0.0))
        self.top_k = int(post.get("top_k", 1))
        self.softmax = bool(post.get("softmax", False))
        self.labels = list(post.get("labels", []))
        self.jpeg_draft = jpeg_draft

    # --- ONNX Runtime ------------------------------------------------------

    def session(self, threads=1):
        """A new session with highserve's options and `threads` intra-op threads."""
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_mem_pattern = False
        so.log_severity_level = 3
        return ort.InferenceSession(str(self.file), sess_options=so, providers=["CPUExecutionProvider"])

    def infer(self, session, batch):
        """The model's output for a batch [N, 3, H, W] (float32)."""
        return session.run([self.output_name], {self.input_name: batch})[0]

    # --- image → tensor ----------------------------------------------------

    def _fit_width(self, w, h):
        return max(1, min(self.width, -(-self.height * w // max(h, 1))))

    def _needed(self, w, h):
        """The smallest decoded size that still gives a full-quality resize."""
        if self.resize == "fit_height_pad_right":
            return self._fit_width(w, h), self.height
        if self.resize == "center_crop":
            return self._shorter_side_to(w, h)
        return self.width, self.height

    def _shorter_side_to(self, w, h):
        side = self.resize_shorter
        return (side, side * h // w) if w <= h else (side * w // h, side)

    def decode(self, data):
        """Encoded image bytes → an RGB Pillow image (DCT-scaled for JPEG)."""
        try:
            im = Image.open(io.BytesIO(data))
            if self.jpeg_draft and im.format == "JPEG":
                im.draft("RGB", self._needed(*im.size))
            im = im.convert("RGB")
        except Exception as e:  # Pillow raises many types for bad input
            raise BadImage(f"cannot decode the body as an image: {type(e).__name__}: {e}") from None
        return im

    def tensor(self, im):
        """An RGB Pillow image → one float32 tensor [3, H, W] (or [H, W, 3])."""
        w, h = im.size
        if self.resize == "fit_height_pad_right":
            rw = self._fit_width(w, h)
            im = im.resize((rw, self.height), Image.BILINEAR)
        elif self.resize == "center_crop":
            sw, sh = self._shorter_side_to(w, h)
            cw, ch = min(self.width, sw), min(self.height, sh)
            left, top = (sw - cw) // 2, (sh - ch) // 2
            fx, fy = w / sw, h / sh
            box = (left * fx, top * fy, min(left * fx + cw * fx, w), min(top * fy + ch * fy, h))
            im = im.resize((self.width, self.height), Image.BILINEAR, box=box)
        else:
            im = im.resize((self.width, self.height), Image.BILINEAR)
        px = np.asarray(im)  # H x w x 3, uint8, RGB
        if self.bgr:
            px = px[:, :, ::-1]
        x = (px.astype(np.float32) * self.scale - self.mean) / self.std
        rh, rw = x.shape[:2]
        if self.nchw:
            out = np.full((3, self.height, self.width), self.pad_value, dtype=np.float32)
            out[:, :rh, :rw] = x.transpose(2, 0, 1)
        else:
            out = np.full((self.height, self.width, 3), self.pad_value, dtype=np.float32)
            out[:rh, :rw, :] = x
        return out

    def preprocess(self, data):
        """Encoded image bytes → one input tensor."""
        return self.tensor(self.decode(data))

    # --- output → answer ---------------------------------------------------

    def classes(self, row):
        """One output row → highserve's `classes` list."""
        row = np.asarray(row, dtype=np.float32).reshape(-1)
        if self.softmax:
            e = np.exp(row - row.max())
            row = e / e.sum()
        k = min(self.top_k, row.size)
        # Stable sort on -score: equal scores keep the lower index first.
        order = np.argsort(-row, kind="stable")[:k]
        return [{"index": int(i), "label": self.labels[i] if i < len(self.labels) else str(int(i)),
                 "score": float(row[i])} for i in order]

    def answer(self, row):
        return {"model_name": self.name, "model_version": self.version, "classes": self.classes(row)}

    # --- the whole request, one image at a time ----------------------------

    def run_one(self, session, data):
        """Encoded image → answer dict, batch of one."""
        x = self.preprocess(data)[None]
        return self.answer(self.infer(session, x)[0])

    def run_batch(self, session, images):
        """Encoded images → answer dicts, one ORT run for all of them."""
        x = np.stack([self.preprocess(d) for d in images])
        y = self.infer(session, x)
        return [self.answer(r) for r in y]


class OcrModel:
    """highserve's `ocr` pipeline as Python users run it: one RapidOCR
    (rapidocr-onnxruntime 1.4.4, its default config.yaml) per "session", on
    the repository's ppocr_det/cls/rec model files, every ONNX Runtime
    session with `threads` intra-op threads (scripts/ocr_reference.py's
    make_engine, which checks that rapidocr applied them). The same
    interface as Model, so each peer serves it unchanged: `preprocess`
    decodes (rapidocr's LoadImage: Pillow, to BGR), `run_one` does the whole
    request, `answer_lines` makes highserve's answer. rapidocr works on one
    image at a time (its classifier and recognizer batch the crops of that
    image), so there is no batch across requests: max_batch_size 1."""

    kind = "ocr"
    max_batch_size = 1
    max_queue_delay_s = 0.0

    def __init__(self, name, repository=DEFAULT_REPOSITORY):
        if str(SCRIPTS) not in sys.path:
            sys.path.insert(0, str(SCRIPTS))
        self.name = name
        self.repository = Path(repository)
        cfg_path = self.repository / name / "config.toml"
        if not cfg_path.exists():
            raise SystemExit(f"{cfg_path} is missing (scripts/make_resnet50.py links it into the benchmark "
                             "repository)")
        self.version = "1"
        for step in ("det", "cls", "rec"):
            if not (self.repository / f"ppocr_{step}" / "1" / "model.onnx").exists():
                raise SystemExit(f"{self.repository / f'ppocr_{step}'} has no 1/model.onnx (scripts/fetch)")
        self.file = self.repository / "ppocr_det" / "1" / "model.onnx"
        from ocr_reference import make_engine, run_engine
        from rapidocr_onnxruntime.utils.load_image import LoadImage
        self._load = LoadImage()
        self._make_engine, self._run_engine = make_engine, run_engine

    def session(self, threads=1):
        """A new RapidOCR whose three ONNX Runtime sessions have `threads` intra-op threads."""
        return self._make_engine(threads, models=self.repository)

    def preprocess(self, data):
        """Encoded image bytes → the BGR array rapidocr works on."""
        try:
            return self._load(data)
        except Exception as e:  # Pillow and rapidocr raise many types for bad input
            raise BadImage(f"cannot decode the body as an image: {type(e).__name__}: {e}") from None

    def lines(self, engine, image):
        """rapidocr on one decoded image → highserve's lines (reading order)."""
        return self._run_engine(engine, image)

    def answer_lines(self, lines):
        return {"model_name": self.name, "model_version": self.version, "lines": lines}

    def run_one(self, engine, data):
        """Encoded image → highserve's answer."""
        return self.answer_lines(self.lines(engine, self.preprocess(data)))


def load_model(name, repository=DEFAULT_REPOSITORY, jpeg_draft=True):
    """The repository's model `name`: OcrModel for the `ocr` pipeline, else
    Model (an image classifier)."""
    cfg_path = Path(repository) / name / "config.toml"
    if cfg_path.exists() and "pipeline" in tomllib.loads(cfg_path.read_text()):
        return OcrModel(name, repository)
    return Model(name, repository, jpeg_draft=jpeg_draft)


def common_args(ap, default_threads=1):
    """The flags every peer takes."""
    ap.add_argument("--model", required=True, help="model name in the repository (ppocr_cls, resnet50)")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                    help="highserve model repository (default .cache/models-bench)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=default_threads,
                    help=f"ONNX Runtime intra-op threads per session (default {default_threads})")
    ap.add_argument("--no-jpeg-draft", action="store_true",
                    help="decode JPEGs at full size (highserve's jpeg_dct_scaling = false)")
    return ap


def cores():
    return len(os.sched_getaffinity(0))


def dumps(doc):
    return json.dumps(doc, separators=(",", ":")).encode()
