#!/usr/bin/env python3
"""Compares highserve's `ocr` model with the reference (rapidocr-onnxruntime).

usage: compare_ocr.py URL                  # a running daemon, e.g. http://127.0.0.1:8000
       compare_ocr.py --responses FILE     # answers saved earlier with --save FILE
       compare_ocr.py --self-check         # the reference against itself (must pass)

Sends every image of the OCR test set (.cache/ocrset/manifest.json, from
scripts/fetch --test) to URL/v2/models/ocr/infer as the image's bytes with
Content-Type image/jpeg or image/png, expecting

  {"model_name": "ocr", "model_version": "1",
   "lines": [{"text": "...", "score": 0.98, "box": [[x, y], [x, y], [x, y], [x, y]]}, ...]}

and compares the answers with tests/data/ocr_reference.json (made by
scripts/ocr_reference.py from the same images). It prints, per image and in
total:

  - the character error rate (CER, below) of the daemon and of the reference
    against the text the test set drew;
  - box agreement: daemon lines are matched to reference lines greedily by the
    IoU of their quadrilaterals (the pair with the largest IoU first, then the
    next largest among lines not yet matched, as long as the IoU is above 0);
    the minimum and mean IoU of the matched pairs, how many matched pairs have
    the same text, and the lines left unmatched on either side.

It exits 1 when the daemon's total CER is above the reference's plus 0.01, when
a matched pair has an IoU below 0.7, or when any line is unmatched, after
saying which; 2 when it cannot run the comparison at all.

CER: for each image, E is the expected lines' text and R the recognized lines'
text, each joined in reading order with "\\n" (an image with no lines gives "").
errors(image) is the Levenshtein distance between E and R over Unicode code
points (insertions, deletions and substitutions each cost 1); chars(image) is
len(E), the "\\n" separators included. CER = sum of errors over all images /
sum of chars over all images. An image with no expected text adds nothing to
the denominator and every recognized character (and separator) to the errors.

IoU: boxes are taken as convex polygons (the convex hull of the four corners,
so corner order does not matter); their intersection is computed exactly with
Sutherland-Hodgman clipping, and IoU = area(A n B) / (area(A) + area(B) -
area(A n B)), 0 for degenerate boxes.

Only the standard library is used; the other OCR scripts import the metrics
from here.
"""

import argparse
import hashlib
import http.client
import json
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / ".cache" / "ocrset" / "manifest.json"
REFERENCE = ROOT / "tests" / "data" / "ocr_reference.json"
CER_SLACK = 0.01
MIN_IOU = 0.7
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


# --- metrics --------------------------------------------------------------

def edit_distance(a, b):
    """Levenshtein distance between strings a and b (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def joined(lines):
    """The text of lines (dicts with "text") in their order, joined with "\\n"."""
    return "\n".join(line["text"] for line in lines)


def image_errors(expected_lines, recognized_lines):
    """(errors, chars) of one image, as in the CER definition above."""
    e, r = joined(expected_lines), joined(recognized_lines)
    return edit_distance(e, r), len(e)


def cer(pairs):
    """CER over (expected_lines, recognized_lines) pairs, one per image:
    returns (cer, errors, chars)."""
    errors = chars = 0
    for expected, recognized in pairs:
        e, c = image_errors(expected, recognized)
        errors += e
        chars += c
    return (errors / chars if chars else float(errors > 0)), errors, chars


def _cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull(points):
    """Counter-clockwise (in x-right, y-up terms) convex hull, Andrew's monotone chain."""
    pts = sorted(set((float(x), float(y)) for x, y in points))
    if len(pts) <= 2:
        return pts
    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and _cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def area(poly):
    """Area of a simple polygon (shoelace), always >= 0."""
    n = len(poly)
    return abs(sum(poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))) / 2


def clip(subject, clipper):
    """Sutherland-Hodgman: subject polygon clipped by the convex, counter-
    clockwise polygon clipper."""
    out = subject
    for i in range(len(clipper)):
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]
        inp, out = out, []
        if not inp:
            break
        for j in range(len(inp)):
            p, q = inp[j - 1], inp[j]
            p_in, q_in = _cross(a, b, p) >= 0, _cross(a, b, q) >= 0
            if q_in:
                if not p_in:
                    out.append(_intersect(p, q, a, b))
                out.append(q)
            elif p_in:
                out.append(_intersect(p, q, a, b))
    return out


def _intersect(p, q, a, b):
    """Where segment p-q crosses the line through a and b."""
    dp, dq = _cross(a, b, p), _cross(a, b, q)
    t = dp / (dp - dq)
    return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))


def iou(box_a, box_b):
    """Exact IoU of two boxes (lists of corner points), as convex polygons."""
    a, b = convex_hull(box_a), convex_hull(box_b)
    if len(a) < 3 or len(b) < 3:
        return 0.0
    area_a, area_b = area(a), area(b)
    if area_a == 0 or area_b == 0:
        return 0.0
    inter = clip(a, b)
    inter_area = area(inter) if len(inter) >= 3 else 0.0
    union = area_a + area_b - inter_area
    return inter_area / union if union > 0 else 0.0


def match(lines_a, lines_b):
    """Greedy matching by IoU: returns ([(i, j, iou)], unmatched_a, unmatched_b)
    with indices into lines_a and lines_b (dicts with "box")."""
    cand = []
    for i, la in enumerate(lines_a):
        for j, lb in enumerate(lines_b):
            v = iou(la["box"], lb["box"])
            if v > 0:
                cand.append((-v, i, j))
    cand.sort()
    used_a, used_b, pairs = set(), set(), []
    for neg, i, j in cand:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j, -neg))
    pairs.sort()
    return (pairs, [i for i in range(len(lines_a)) if i not in used_a],
            [j for j in range(len(lines_b)) if j not in used_b])


# --- the daemon -----------------------------------------------------------

def check_answer(doc, where):
    """The lines of an answer in the daemon's format; raises ValueError saying
    what is wrong otherwise."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: the answer is not a JSON object")
    if doc.get("model_name") != "ocr":
        raise ValueError(f"{where}: model_name is {doc.get('model_name')!r}, expected 'ocr'")
    lines = doc.get("lines")
    if not isinstance(lines, list):
        raise ValueError(f"{where}: no \"lines\" list in the answer (keys: {sorted(doc)})")
    for k, line in enumerate(lines):
        w = f"{where}: lines[{k}]"
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            raise ValueError(f"{w} has no string \"text\"")
        if not isinstance(line.get("score"), (int, float)):
            raise ValueError(f"{w} has no numeric \"score\"")
        box = line.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) for c in p)
                           for p in box)):
            raise ValueError(f"{w}: \"box\" is not 4 [x, y] corners: {box!r}")
    return lines


class Client:
    """One keep-alive HTTP/1.1 connection to the daemon."""

    def __init__(self, url, timeout=60):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"{url}: expected http://HOST:PORT")
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.prefix = u.path.rstrip("/")
        self.conn = None

    def post(self, path, body, content_type):
        """POST body; returns (status, response bytes). Reconnects once if the
        server closed the kept-alive connection."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.prefix + path, body=body, headers={"Content-Type": content_type})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def get(self, path):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.request("GET", self.prefix + path)
        r = self.conn.getresponse()
        return r.status, r.read()


def ask_daemon(url, manifest_dir, images, model="ocr"):
    """{file: lines} from the daemon for every image; exits 2 with the reason
    if the daemon cannot be reached or answers wrongly."""
    client = Client(url)
    answers = {}
    for entry in images:
        path = manifest_dir / entry["file"]
        ctype = CONTENT_TYPES.get(path.suffix.lower())
        if ctype is None:
            fail(f"{path}: no content type for {path.suffix}")
        try:
            status, data = client.post(f"/v2/models/{model}/infer", path.read_bytes(), ctype)
        except OSError as e:
            fail(f"cannot POST {path.name} to {url}/v2/models/{model}/infer: {e}")
        if status != 200:
            fail(f"{path.name}: the daemon answered {status}: {data[:300].decode(errors='replace')}")
        try:
            doc = json.loads(data)
        except json.JSONDecodeError as e:
            fail(f"{path.name}: the answer is not JSON ({e}): {data[:200]!r}")
        try:
            answers[entry["file"]] = check_answer(doc, path.name)
        except ValueError as e:
            fail(str(e))
    return answers


# --- the comparison -------------------------------------------------------

def fail(msg):
    print(f"compare_ocr: {msg}", file=sys.stderr)
    sys.exit(2)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(manifest_path, reference_path, allow_changed):
    if not manifest_path.exists():
        fail(f"{manifest_path} is missing: run scripts/fetch --test (it makes the OCR test set)")
    if not reference_path.exists():
        fail(f"{reference_path} is missing: run scripts/ocr_reference.py")
    manifest = json.loads(manifest_path.read_text())
    reference = json.loads(reference_path.read_text())
    ref_by_file = {e["file"]: e for e in reference["images"]}
    changed = []
    for entry in manifest["images"]:
        ref = ref_by_file.get(entry["file"])
        if ref is None:
            fail(f"{entry['file']} is in {manifest_path} but not in {reference_path}: "
                 "the test set changed; rerun scripts/ocr_reference.py")
        if ref.get("sha256") != sha256(manifest_path.parent / entry["file"]):
            changed.append(entry["file"])
    if changed:
        msg = (f"{len(changed)} test images differ from those the reference was made from "
               f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}): the generator, fonts or Pillow "
               "changed; rerun scripts/ocr_reference.py")
        if not allow_changed:
            fail(msg + " (or pass --allow-changed-images)")
        print(f"compare_ocr: warning: {msg}", file=sys.stderr)
    return manifest, ref_by_file


def compare(manifest, ref_by_file, answers, out=sys.stdout):
    """Prints the per-image table and the totals; returns the list of failures."""
    rows, failures, all_ious = [], [], []
    tot = {"ref_err": 0, "dmn_err": 0, "chars": 0, "ref_lines": 0, "dmn_lines": 0, "matched": 0,
           "same_text": 0, "un_ref": 0, "un_dmn": 0}
    for entry in manifest["images"]:
        f = entry["file"]
        expected, ref_lines, dmn_lines = entry["lines"], ref_by_file[f]["lines"], answers[f]
        ref_err, chars = image_errors(expected, ref_lines)
        dmn_err, _ = image_errors(expected, dmn_lines)
        pairs, un_dmn, un_ref = match(dmn_lines, ref_lines)
        ious = [v for _, _, v in pairs]
        all_ious.extend(ious)
        same = sum(dmn_lines[i]["text"] == ref_lines[j]["text"] for i, j, _ in pairs)
        for i, j, v in pairs:
            if v < MIN_IOU:
                failures.append(f"{f}: daemon line {dmn_lines[i]['text']!r} and reference line "
                                f"{ref_lines[j]['text']!r} overlap with IoU {v:.3f} < {MIN_IOU}")
        for j in un_ref:
            failures.append(f"{f}: reference line {ref_lines[j]['text']!r} at {ref_lines[j]['box']} "
                            "has no daemon line")
        for i in un_dmn:
            failures.append(f"{f}: daemon line {dmn_lines[i]['text']!r} at {dmn_lines[i]['box']} "
                            "has no reference line")
        for k, v in [("ref_err", ref_err), ("dmn_err", dmn_err), ("chars", chars), ("ref_lines", len(ref_lines)),
                     ("dmn_lines", len(dmn_lines)), ("matched", len(pairs)), ("same_text", same),
                     ("un_ref", len(un_ref)), ("un_dmn", len(un_dmn))]:
            tot[k] += v
        rows.append((f, chars, ref_err, dmn_err, len(ref_lines), len(dmn_lines), len(pairs), same,
                     min(ious) if ious else None, sum(ious) / len(ious) if ious else None, len(un_ref), len(un_dmn)))

    def rate(err, chars):
        return f"{err / chars:7.4f}" if chars else f"{err:4d} err"

    def num(v):
        return f"{v:6.3f}" if v is not None else "     -"

    head = (f"{'image':<30} {'chars':>5} {'CER ref':>8} {'CER dmn':>8} {'lines r/d':>9} {'match':>5} "
            f"{'same':>4} {'IoU min':>7} {'mean':>6} {'unm r/d':>7}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for f, chars, re_, de, nr, nd, m, same, mn, mean, ur, ud in rows:
        print(f"{f:<30} {chars:5d} {rate(re_, chars):>8} {rate(de, chars):>8} {f'{nr}/{nd}':>9} {m:5d} "
              f"{same:4d} {num(mn):>7} {num(mean)} {f'{ur}/{ud}':>7}", file=out)
    print("-" * len(head), file=out)
    ref_cer = tot["ref_err"] / tot["chars"] if tot["chars"] else 0.0
    dmn_cer = tot["dmn_err"] / tot["chars"] if tot["chars"] else 0.0
    mn = min(all_ious) if all_ious else None
    mean = sum(all_ious) / len(all_ious) if all_ious else None
    print(f"{'total':<30} {tot['chars']:5d} {ref_cer:8.4f} {dmn_cer:8.4f} "
          f"{str(tot['ref_lines']) + '/' + str(tot['dmn_lines']):>9} {tot['matched']:5d} {tot['same_text']:4d} "
          f"{num(mn):>7} {num(mean)} {str(tot['un_ref']) + '/' + str(tot['un_dmn']):>7}", file=out)
    print(f"\nCER: daemon {dmn_cer:.4f} ({tot['dmn_err']} errors), reference {ref_cer:.4f} "
          f"({tot['ref_err']} errors) over {tot['chars']} expected characters; limit {ref_cer + CER_SLACK:.4f}",
          file=out)
    print(f"boxes: {tot['matched']} matched (IoU min {num(mn).strip()}, mean {num(mean).strip()}), "
          f"{tot['same_text']} of them with the same text; unmatched: {tot['un_ref']} reference, "
          f"{tot['un_dmn']} daemon", file=out)
    if dmn_cer > ref_cer + CER_SLACK:
        failures.insert(0, f"the daemon's CER {dmn_cer:.4f} is above the reference's {ref_cer:.4f} + {CER_SLACK}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", help="the daemon, e.g. http://127.0.0.1:8000")
    ap.add_argument("--responses", type=Path, help="compare answers saved with --save instead of asking a daemon")
    ap.add_argument("--self-check", action="store_true",
                    help="compare the reference with itself (checks the metrics; must pass)")
    ap.add_argument("--save", type=Path, help="save the daemon's answers ({file: lines}) as JSON here")
    ap.add_argument("--model", default="ocr", help="the model to ask (default ocr)")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--allow-changed-images", action="store_true",
                    help="go on when the test images differ from the reference's (a warning then)")
    args = ap.parse_args()
    if sum(bool(x) for x in (args.url, args.responses, args.self_check)) != 1:
        ap.error("give exactly one of URL, --responses FILE and --self-check")
    manifest, ref_by_file = load(args.manifest, args.reference, args.allow_changed_images)
    if args.self_check:
        answers = {e["file"]: ref_by_file[e["file"]]["lines"] for e in manifest["images"]}
    elif args.responses:
        saved = json.loads(args.responses.read_text())
        missing = [e["file"] for e in manifest["images"] if e["file"] not in saved]
        if missing:
            fail(f"{args.responses} has no answer for {', '.join(missing[:3])}")
        answers = {f: check_answer({"model_name": "ocr", "lines": v}, f) for f, v in saved.items()}
    else:
        t0 = time.monotonic()
        answers = ask_daemon(args.url.rstrip("/"), args.manifest.parent, manifest["images"], args.model)
        print(f"{len(answers)} images through {args.url} in {time.monotonic() - t0:.1f} s\n")
    if args.save:
        args.save.write_text(json.dumps(answers, indent=None) + "\n")
    failures = compare(manifest, ref_by_file, answers)
    if failures:
        print(f"\nFAIL ({len(failures)}):")
        for msg in failures:
            print(f"  {msg}")
        sys.exit(1)
    print("\nOK: the daemon agrees with the reference")


if __name__ == "__main__":
    main()
