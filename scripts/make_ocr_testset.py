#!/usr/bin/env python3
"""Makes the OCR test set: images with known text lines, and manifest.json.

usage: make_ocr_testset.py [--photos DIR] OUT_DIR

scripts/fetch --test runs it with the .cache/venv Python into .cache/ocrset/
(again whenever this file changes). Everything is drawn from one seeded random
generator and fixed inputs, so the same fonts, photos and package versions give
byte-identical files.

The images (27: 24 with text, 3 without):
  - sizes 640x480, 800x600, 1024x768 and 1280x720, and some narrow ones: phone
    portrait 360x640 and 480x800, a 1200x140 banner (wider than 8:1, which
    takes rapidocr's letterbox path) and a 480x160 label
  - 1 to 8 text lines each, in DejaVu Sans/Serif/Mono (fonts-dejavu-core) and
    Liberation Sans/Serif (fonts-liberation2), 16 to 48 px, some bold; a few
    images have two columns (two lines side by side on one row)
  - backgrounds: plain light colours, light colours with noise and faint
    scratches, and skimage's sample photographs (.cache/photos: astronaut,
    coffee, chelsea) with the text on a lighter (or darker) box
  - some images rotated by 180 degrees as a whole, and in others single lines
    drawn upside down
  - JPEG (quality 92) or PNG
  - no text at all: a photograph, a noise field and a blurred photograph (both
    coffee: the sample photographs' only ones where rapidocr finds nothing)

Text is ASCII only (the recognizer's charset is Chinese + ASCII): English
words, digits, punctuation and mixed case.

manifest.json:
  {"version": 1, "seed": ..., "images": [
     {"file": "ocr_00_plain_640x480.png", "width": 640, "height": 480,
      "background": "plain", "rotated": false,
      "lines": [{"text": "...", "box": [[x, y], [x, y], [x, y], [x, y]],
                 "font": "DejaVuSans.ttf", "size": 24, "upside_down": false},
                ...]}, ...]}
`lines` are in reading order: top to bottom, then left to right, as seen in
the final image (so for an image rotated by 180 degrees, the line drawn last
comes first). `box` is the axis-aligned box of the line's ink in pixels of the
final image, corners top-left, top-right, bottom-right, bottom-left (x to the
right, y down, edges between pixels: a box [[10, 5], [30, 5], [30, 20],
[10, 20]] covers pixels 10..29 x 5..19). `text` is what a reader sees, whatever
way up the line is drawn.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
SEED = 20260417

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
LIBERATION = Path("/usr/share/fonts/truetype/liberation2")
FONTS = [
    DEJAVU / "DejaVuSans.ttf",
    DEJAVU / "DejaVuSans-Bold.ttf",
    DEJAVU / "DejaVuSerif.ttf",
    DEJAVU / "DejaVuSansMono.ttf",
    LIBERATION / "LiberationSans-Regular.ttf",
    LIBERATION / "LiberationSans-Bold.ttf",
    LIBERATION / "LiberationSerif-Regular.ttf",
]
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png"]
# The part of each photograph used (left, top, right, bottom): the astronaut's
# top only, above her mission patch and name tag, which have text of their own.
PHOTO_REGIONS = {"astronaut.png": (0, 0, 512, 240)}

WORDS = """
able about account action active address after again agent alarm album almost
amount annual answer apple april area array arrive audio august autumn average
backup balance basic battery before better bicycle billing black blue board
border bottom branch bridge bright broken budget buffer button cable camera
canal carbon careful center change channel charge check circle city classic
clean client clock closed cloud coffee colour common copper corner cotton
counter country credit current customer daily damage danger data debit
december default delivery desert detail device direct dollar double draft
driver early east editor effect eleven empty energy engine entry error
evening exact export factory family farmer fast field filter final finish
first flight floor flower forest format forward fourth fresh friday garden
gentle glass golden green ground group guest handle harbor health heavy
height hidden history holiday honest hotel hundred image import income
index indoor inside island jacket journal july kernel kitchen label ladder
large later layer leather letter level light limit linear liquid little
local lower machine manual market master matter medium member memory message
metal middle minute mirror mobile modern monday morning motor mountain music
narrow nature network normal north notice number object office online orange
order output owner packet page paper parcel parking partner people pepper
period person phone picture pillow planet plastic pocket police portal
pretty price print profile public purple quick radio random rapid reader
record region remote report river rocket rubber safety salt sample saturday
school screen season second secret select server session shadow signal
silver simple single sister small smooth socket solid south speed spring
square stable station steel stone street strong studio summer sunday supply
switch system table tablet target ticket timber title today token total
tower track traffic travel tuesday tunnel update upper useful valley value
vector velvet version village violet visitor voltage wallet water weather
wednesday weekly window winter wooden yellow yesterday zero
""".split()

NAMES = ["Alice", "Bruno", "Carmen", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemal", "Lucia", "Marta", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tomas"]
STREETS = ["Main St.", "Oak Avenue", "River Rd.", "Harbor Lane", "Station Sq.", "Elm Street"]
UNITS = ["kg", "km", "ml", "mm", "MB", "GB", "kW", "V", "Hz", "%"]


def die(msg):
    sys.exit(f"make_ocr_testset: {msg}")


# --- text -----------------------------------------------------------------

def words(rng, n):
    return [rng.choice(WORDS) for _ in range(n)]


def sentence(rng):
    w = words(rng, rng.randint(2, 7))
    w[0] = w[0].capitalize()
    if rng.random() < 0.3:
        i = rng.randrange(len(w))
        w[i] = w[i].capitalize()
    end = rng.choice([".", ".", "", "!", "?", ";", ","])
    return " ".join(w) + end


def heading(rng):
    w = words(rng, rng.randint(1, 4))
    if rng.random() < 0.5:
        return " ".join(x.upper() for x in w)
    return " ".join(x.capitalize() for x in w)


def key_value(rng):
    kind = rng.randrange(9)
    if kind == 0:
        return f"Total: ${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}"
    if kind == 1:
        return f"Date: {rng.randint(2019, 2031)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 2:
        return f"Invoice No. {rng.randint(1000, 99999)}-{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}"
    if kind == 3:
        return f"Tel. +{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(1000, 9999)} {rng.randint(10, 99)}"
    if kind == 4:
        return f"{rng.choice(NAMES)} {rng.choice(NAMES)[0]}., {rng.randint(1, 240)} {rng.choice(STREETS)}"
    if kind == 5:
        return f"{rng.choice(WORDS).capitalize()} {rng.randint(1, 999)} {rng.choice(UNITS)} ({rng.randint(1, 99)}%)"
    if kind == 6:
        return f"Open {rng.randint(6, 11):02d}:{rng.choice(['00', '15', '30', '45'])} - {rng.randint(16, 23)}:00"
    if kind == 7:
        tag = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789") for _ in range(7))
        return f"Order ID: {tag}"
    return f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} {rng.choice(WORDS)} #{rng.randint(1, 500)}"


def make_text(rng, font, max_w):
    """A line of text whose ink fits in max_w pixels (drawn with font)."""
    for _ in range(40):
        pick = rng.random()
        text = sentence(rng) if pick < 0.45 else heading(rng) if pick < 0.6 else key_value(rng)
        if ink_width(font, text) <= max_w:
            return text
    # Fall back to single words, shortest last.
    for w in sorted(WORDS, key=len, reverse=True):
        if ink_width(font, w.capitalize()) <= max_w:
            return w.capitalize()
    die(f"no text fits in {max_w} px with {font.path} at {font.size} px")


# --- drawing --------------------------------------------------------------

def ink_width(font, text):
    left, _, right, _ = font.getbbox(text)
    return right - left


def load_font(path, size):
    if not path.exists():
        die(f"font {path} is missing: install fonts-dejavu-core and fonts-liberation2 (scripts/fetch does)")
    return ImageFont.truetype(str(path), size)


def light_colour(rng):
    return tuple(rng.randint(222, 255) for _ in range(3))


def dark_colour(rng):
    base = rng.randint(0, 45)
    return tuple(min(255, base + rng.randint(0, 35)) for _ in range(3))


def plain_background(rng, w, h):
    return Image.new("RGB", (w, h), light_colour(rng))


def noisy_background(rng, nprng, w, h):
    base = np.array(light_colour(rng), dtype=np.float32)
    # A gentle gradient, Gaussian noise, and a few faint scratches.
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
    arr = base + gy * rng.uniform(-12, 12) + nprng.normal(0, rng.uniform(8, 22), (h, w, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 9)):
        g = rng.randint(175, 215)
        d.line([(rng.randrange(w), rng.randrange(h)), (rng.randrange(w), rng.randrange(h))],
               fill=(g, g, g), width=rng.randint(1, 2))
    return img


def photo_background(photo_dir, name, w, h, rng):
    """A photograph scaled to cover w x h, cropped at a seeded offset."""
    img = Image.open(photo_dir / name).convert("RGB")
    if name in PHOTO_REGIONS:
        img = img.crop(PHOTO_REGIONS[name])
    scale = max(w / img.width, h / img.height) * rng.uniform(1.0, 1.25)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    return img.crop((left, top, left + w, top + h))


def draw_line(img, text, font, x, y, colour, upside_down, box_style, rng):
    """Draws text with its ink's top-left at (x, y); returns the ink box
    (left, top, right, bottom). box_style: None, or "light"/"dark" for a box
    behind the text (photographic backgrounds)."""
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left, bottom - top
    box = (x, y, x + w, y + h)
    if box_style is not None:
        pad = max(4, font.size // 3)
        overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
        fill = (250, 250, 246) if box_style == "light" else (20, 22, 28)
        alpha = rng.randint(190, 225)
        ImageDraw.Draw(overlay).rounded_rectangle(
            (x - pad, y - pad, x + w + pad, y + h + pad), radius=pad, fill=fill + (alpha,))
        img.paste(Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB"))
    # Draw into a patch exactly the ink box, so that turning it upside down
    # keeps the ink in the same box.
    patch = img.crop(box)
    if upside_down:
        patch = patch.transpose(Image.Transpose.ROTATE_180)
    ImageDraw.Draw(patch).text((-left, -top), text, font=font, fill=colour)
    if upside_down:
        patch = patch.transpose(Image.Transpose.ROTATE_180)
    img.paste(patch, box[:2])
    return box


# --- layout ---------------------------------------------------------------

def layout(img, rng, spec):
    """Draws spec's lines on img; returns [(row, column, text, box, font, size, upside_down)]."""
    w, h = img.size
    n = spec["lines"]
    lo, hi = spec.get("sizes", (16, 48))
    margin = max(12, w // 40)
    # Pick sizes so that n rows with gaps fit in the height.
    for _ in range(200):
        sizes = [rng.randint(lo, hi) for _ in range(n)]
        need = sum(round(s * 1.25) for s in sizes) + sum(round(s * rng.uniform(0.8, 1.3)) for s in sizes[1:])
        if need + 2 * margin <= h:
            break
    else:
        die(f"{spec['name']}: {n} lines of {lo}-{hi} px do not fit in {w}x{h}")
    free = h - 2 * margin - sum(round(s * 1.25) for s in sizes)
    gaps = [rng.uniform(0.8, 1.3) * s for s in sizes[1:]]
    gaps = [g * min(1.0, free / sum(gaps)) for g in gaps] if gaps else []
    # Spread the rest of the height over the top, the gaps and the bottom.
    weights = [rng.uniform(0.2, 1.0) for _ in range(len(gaps) + 2)]
    extra = [max(0.0, free - sum(gaps)) * wt / sum(weights) for wt in weights]
    gaps = [g + e for g, e in zip(gaps, extra[1:])]
    y = margin + extra[0]
    out = []
    for row, size in enumerate(sizes):
        path = rng.choice(FONTS)
        font = load_font(path, size)
        style = spec.get("box")
        colour = (245, 245, 240) if style == "dark" else dark_colour(rng)
        two = spec.get("columns", 1) == 2 and rng.random() < 0.75
        upside = spec.get("upside_down", 0.0)
        if two:
            half = (w - 2 * margin) // 2 - 2 * size
            t1, t2 = make_text(rng, font, half), make_text(rng, font, half)
            x1 = margin + rng.randint(0, max(0, half - ink_width(font, t1)) // 3)
            x2 = w // 2 + size + rng.randint(0, max(0, half - ink_width(font, t2)) // 2)
            items = [(0, t1, x1), (1, t2, x2)]
        else:
            avail = w - 2 * margin
            t = make_text(rng, font, rng.randint(avail // 2, avail) if rng.random() < 0.6 else avail)
            x = margin + rng.randint(0, max(0, avail - ink_width(font, t)))
            items = [(0, t, x)]
        for col, text, x in items:
            # Lines side by side share a baseline: the ink's top is where the
            # font would draw it from the row's top.
            yy = round(y) + font.getbbox(text)[1]
            down = rng.random() < upside
            box = draw_line(img, text, font, x, yy, colour, down, style, rng)
            out.append((row, col, text, box, path.name, size, down))
        y += round(size * 1.25)
        if row < len(gaps):
            y += gaps[row]
    return out


def corners(box):
    l, t, r, b = box
    return [[l, t], [r, t], [r, b], [l, b]]


# name, (w, h), background, photo, lines, extra
SPECS = [
    ("plain", (640, 480), "plain", None, 3, {}),
    ("plain", (800, 600), "plain", None, 6, {}),
    ("plain", (1280, 720), "plain", None, 8, {"sizes": (18, 40)}),
    ("plain", (1024, 768), "plain", None, 5, {"columns": 2}),
    ("plain", (640, 480), "plain", None, 1, {"sizes": (36, 48)}),
    ("plain", (800, 600), "plain", None, 4, {"rotate": True}),
    ("plain", (1024, 768), "plain", None, 6, {"upside_down": 0.4}),
    ("plain", (360, 640), "plain", None, 7, {"sizes": (16, 28)}),
    ("noisy", (640, 480), "noisy", None, 4, {}),
    ("noisy", (800, 600), "noisy", None, 5, {"columns": 2}),
    ("noisy", (1280, 720), "noisy", None, 7, {}),
    ("noisy", (1024, 768), "noisy", None, 3, {"rotate": True}),
    ("noisy", (480, 800), "noisy", None, 8, {"sizes": (16, 32)}),
    ("noisy", (1200, 140), "noisy", None, 1, {"sizes": (28, 40)}),
    ("noisy", (800, 600), "noisy", None, 2, {"upside_down": 0.5, "sizes": (30, 48)}),
    ("noisy", (480, 160), "noisy", None, 2, {"sizes": (18, 30)}),
    ("photo", (640, 480), "photo", "coffee.png", 3, {"box": "light"}),
    ("photo", (800, 600), "photo", "astronaut.png", 4, {"box": "light"}),
    ("photo", (1280, 720), "photo", "chelsea.png", 6, {"box": "light", "sizes": (20, 44)}),
    ("photo", (1024, 768), "photo", "coffee.png", 5, {"box": "dark"}),
    ("photo", (1280, 720), "photo", "astronaut.png", 3, {"box": "light", "rotate": True}),
    ("photo", (800, 600), "photo", "chelsea.png", 4, {"box": "dark", "columns": 2}),
    ("photo", (360, 640), "photo", "coffee.png", 5, {"box": "light", "sizes": (16, 30)}),
    ("photo", (1024, 768), "photo", "chelsea.png", 4, {"box": "light", "upside_down": 0.5}),
    # (Not chelsea: the cat's eyes read as "O", at scores around the 0.5 cut.)
    ("empty", (800, 600), "photo", "coffee.png", 0, {}),
    ("empty", (640, 480), "noise", None, 0, {}),
    ("empty", (1280, 720), "photo-blur", "coffee.png", 0, {}),
]


def make_image(i, spec_t, rng, nprng, photo_dir):
    kind, (w, h), background, photo, n, extra = spec_t
    name = f"ocr_{i:02d}_{kind}_{w}x{h}"
    spec = dict(extra, name=name, lines=n)
    if background == "plain":
        img = plain_background(rng, w, h)
    elif background == "noisy":
        img = noisy_background(rng, nprng, w, h)
    elif background == "noise":
        arr = nprng.normal(128, 45, (h // 4, w // 4, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    elif background == "photo":
        img = photo_background(photo_dir, photo, w, h, rng)
    elif background == "photo-blur":
        img = photo_background(photo_dir, photo, w, h, rng).filter(ImageFilter.GaussianBlur(3))
    else:
        die(f"unknown background {background}")
    drawn = layout(img, rng, spec) if n else []
    rotated = bool(extra.get("rotate"))
    lines = []
    for row, col, text, (l, t, r, b), font, size, down in drawn:
        if rotated:
            l, t, r, b = w - r, h - b, w - l, h - t
            row, col = n - 1 - row, 1 - col
        lines.append(((row, col), {"text": text, "box": corners((l, t, r, b)), "font": font, "size": size,
                                   "upside_down": down != rotated}))
    if rotated:
        img = img.transpose(Image.Transpose.ROTATE_180)
    lines.sort(key=lambda e: e[0])
    ext = "png" if background == "plain" or (i % 4 == 3) else "jpg"
    entry = {"file": f"{name}.{ext}", "width": w, "height": h, "background": background,
             "photo": photo, "rotated": rotated, "lines": [e[1] for e in lines]}
    return img, entry


def manifest_json(images):
    """The manifest as JSON with one line per image header and per text line."""
    out = ['{"version": 1, "seed": %d, "generator": "scripts/make_ocr_testset.py", "images": [' % SEED]
    for i, entry in enumerate(images):
        head = {k: v for k, v in entry.items() if k != "lines"}
        out.append(" " + json.dumps(head)[:-1] + ', "lines": [')
        out.extend("  " + json.dumps(line) + ("," if j + 1 < len(entry["lines"]) else "")
                   for j, line in enumerate(entry["lines"]))
        out.append(" ]}" + ("," if i + 1 < len(images) else ""))
    out.append("]}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, metavar="OUT_DIR")
    ap.add_argument("--photos", type=Path, default=ROOT / ".cache" / "photos",
                    help="skimage's sample photographs (default .cache/photos, from scripts/fetch --test)")
    args = ap.parse_args()
    for p in PHOTOS:
        if not (args.photos / p).exists():
            die(f"{args.photos / p} is missing; scripts/fetch --test extracts the sample photographs")
    for f in FONTS:
        if not f.exists():
            die(f"font {f} is missing: install fonts-dejavu-core and fonts-liberation2 (scripts/fetch does)")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    nprng = np.random.default_rng(SEED)
    images = []
    for i, spec in enumerate(SPECS):
        img, entry = make_image(i, spec, rng, nprng, args.photos)
        path = args.out / entry["file"]
        if path.suffix == ".jpg":
            img.save(path, quality=92)
        else:
            img.save(path, optimize=False)
        images.append(entry)
    (args.out / "manifest.json").write_text(manifest_json(images))
    total = sum(len(e["lines"]) for e in images)
    print(f"make_ocr_testset: {len(images)} images, {total} lines in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
