#!/usr/bin/env python3
"""Makes the test images from skimage's sample photographs (seeded, so the
same inputs give the same files).

usage: make_test_images.py PHOTOS_DIR OUT_DIR

  photo_1280x720.jpg  photo-like 1280x720 JPEG (quality 90): a real photograph
                      scaled up, with sensor-like noise so that it has the
                      entropy (and decode cost) of a camera frame
  photo_640x480.jpg   the same at 640x480
  astronaut.png       a real photograph as PNG (RGB)
  rgba.png            PNG with an alpha channel
  gray.jpg            greyscale JPEG
  text_N_0.jpg        a line of text, upright, as an OCR crop
  text_N_180.jpg      the same line rotated by 180 degrees
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINES = [
    "Serving images at speed",
    "Invoice 2026-11-23 total 418.50",
    "The quick brown fox jumps",
    "highserve keeps GPUs busy",
]
FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
]


def font(size, i):
    for path in FONTS[i % len(FONTS):] + FONTS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def photo_like(src, w, h, rng):
    img = Image.open(src).convert("RGB")
    scale = max(w / img.width, h / img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    arr = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32)
    arr += rng.normal(0, 4.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def text_crop(text, i):
    f = font(30, i)
    left, top, right, bottom = f.getbbox(text)
    pad = 8
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (238, 236, 228))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=f, fill=(20, 20, 30))
    return img


def main():
    photos, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261123)
    photo_like(photos / "coffee.png", 1280, 720, rng).save(out / "photo_1280x720.jpg", quality=90)
    photo_like(photos / "coffee.png", 640, 480, rng).save(out / "photo_640x480.jpg", quality=90)
    Image.open(photos / "astronaut.png").convert("RGB").save(out / "astronaut.png")
    rgba = Image.open(photos / "chelsea.png").convert("RGBA")
    rgba.putalpha(180)
    rgba.save(out / "rgba.png")
    Image.open(photos / "chelsea.png").convert("L").save(out / "gray.jpg", quality=90)
    for i, line in enumerate(LINES):
        img = text_crop(line, i)
        img.save(out / f"text_{i}_0.jpg", quality=95)
        img.rotate(180).save(out / f"text_{i}_180.jpg", quality=95)


if __name__ == "__main__":
    main()
