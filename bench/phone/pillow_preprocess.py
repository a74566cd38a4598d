"""Pillow preprocessing of a folder of photos in worker processes: the lower bound of any Python pipeline.

Per image, in a multiprocessing pool of --workers processes (default 2), what a Python predict or
DataLoader must do before the model runs:
    Image.open -> [draft("RGB", (S, S)) with --draft] -> ImageOps.exif_transpose -> convert("RGB")
    -> resize the shorter side to S (--filter bilinear (default, Pillow's antialiased one) or box)
    -> centre crop S x S -> float32 CHW / 255, normalised (ImageNet mean/std)
and the array is sent back to the parent (as a DataLoader worker does). No model, no torch: a
real pipeline only adds to this.
draft() makes libjpeg decode the JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling), the largest
reduction that keeps both sides >= S; without it the whole 12-MP image is decoded.
Timing: from before the pool starts to the last array received (the interpreter's and numpy's
import, ~0.1 s, are left out, in Python's favour). --repeat N runs the pass N times in the same
pool and reports the best (the pool start is then counted in the first pass only).
Prints `PILLOW mode=draft|full images=N workers=W size=S seconds=... img_per_s=...`.
Run: VENV/bin/python pillow_preprocess.py --size 64 [--draft] [--workers 2] FOLDER
"""
import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MEAN = np.asarray([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.asarray([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
CFG = {}


def init(size, draft, resample):
    CFG.update(size=size, draft=draft, resample=resample)


def prep(path):
    size = CFG["size"]
    im = Image.open(path)
    if CFG["draft"]:
        im.draft("RGB", (size, size))
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), CFG["resample"])
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - MEAN) / STD


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--draft", action="store_true", help="use Image.draft (JPEG DCT scaling)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--filter", choices=["bilinear", "box"], default="bilinear")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    exts = {".jpg", ".jpeg", ".png"}
    files = sorted(str(f) for f in Path(a.folder).rglob("*") if f.suffix.lower() in exts)
    if not files:
        sys.exit(f"no images under {a.folder}")
    resample = {"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}[a.filter]
    best = None
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(a.workers, initializer=init, initargs=(a.size, a.draft, resample)) as pool:
        for _ in range(a.repeat):
            n = 0
            for x in pool.imap(prep, files, chunksize=1):
                assert x.shape == (3, a.size, a.size)
                n += 1
            secs = time.perf_counter() - t0
            best = secs if best is None else min(best, secs)
            t0 = time.perf_counter()
    print(f"PILLOW mode={'draft' if a.draft else 'full'} images={n} workers={a.workers} size={a.size} "
          f"filter={a.filter} seconds={best:.3f} img_per_s={n / best:.2f}", flush=True)


if __name__ == "__main__":
    main()
