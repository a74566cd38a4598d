#!/usr/bin/env python3
"""Fashion-MNIST as a folder-per-class PNG dataset, for flora's benchmarks.

Reads the IDX files of Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist;
/usr/share/datasets/fashion-mnist) with the standard library only, and writes
TRAIN_OUT/<class>/train_<index>.png and TEST_OUT/<class>/test_<index>.png from the official
60k/10k split. --per-class / --test-per-class cap each class (a seeded, stable choice).

    bench/make_fashion_mnist.py --train-out /tmp/fm/train --test-out /tmp/fm/test
    bench/make_fashion_mnist.py --train-out /tmp/fm/train --per-class 100 --test-per-class 25

Fashion-MNIST: Copyright (c) 2017 Zalando SE, MIT licence.
"""

import argparse
import gzip
import os
import random
import struct
import sys
import zlib

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
DATA_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path, magic):
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found; install it with: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        data = f.read()
    if struct.unpack(">I", data[:4])[0] != magic:
        sys.exit(f"error: {path} is not an IDX file of the expected kind")
    return data


def load(prefix, data_dir):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"), 2051)
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
    n, rows, cols = struct.unpack(">III", images[4:16])
    if len(images) != 16 + n * rows * cols or len(labels) != 8 + n:
        sys.exit(f"error: truncated Fashion-MNIST files under {data_dir}")
    return n, rows, cols, images[16:], labels[8:]


def png(pixels, width, height):
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def write(prefix, out, cap, args):
    n, rows, cols, pixels, labels = load(prefix, args.data_dir)
    rng = random.Random(args.seed)
    total = 0
    for k, name in enumerate(CLASSES):
        idx = [i for i in range(n) if labels[i] == k]
        rng.shuffle(idx)
        if cap is not None:
            idx = idx[:cap]
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        for i in sorted(idx):
            path = os.path.join(folder, f"{'train' if prefix == 'train' else 'test'}_{i:06d}.png")
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(png(pixels[i * rows * cols:(i + 1) * rows * cols], cols, rows))
            os.replace(tmp, path)
        total += len(idx)
    print(f"{out}: {total} images")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-out", required=True)
    p.add_argument("--test-out")
    p.add_argument("--per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=DATA_DIR)
    args = p.parse_args()
    write("train", args.train_out, args.per_class, args)
    if args.test_out:
        write("t10k", args.test_out, args.test_per_class, args)


if __name__ == "__main__":
    main()
