"""Runs exported flora models under ONNX Runtime (tests/it/export.rs).

usage: onnx_parity.py MODEL.onnx IMAGE_DIR

Checks the model with onnx.checker (full check, shape inference included), then feeds every
PNG in IMAGE_DIR (already at the model's size: no resizing here) the way an app would: as
uint8 RGB pixels when the model normalises inside the graph (metadata flora.input says so),
else normalised float NCHW with the mean and std from the metadata. Prints one JSON object:
{"metadata": {...}, "inputs": [...], "outputs": [...], "probs": {file name: [p, ...]}}.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

path, image_dir = sys.argv[1], sys.argv[2]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
meta = {p.key: p.value for p in model.metadata_props}

opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]

files = sorted(f for f in os.listdir(image_dir) if f.endswith(".png"))
pixels = np.stack([np.asarray(Image.open(os.path.join(image_dir, f)).convert("RGB")) for f in files])
if meta["flora.input"].startswith("uint8"):
    x = pixels
else:
    mean = np.array(json.loads(meta["flora.mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["flora.std"]), dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std)).astype(np.float32)
    x = (pixels.astype(np.float32) * scale - (mean / std).astype(np.float32)).transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
# Twice: the whole batch at once, and one image at a time (the batch axis is dynamic).
probs = session.run(None, {inp.name: x})[0]
single = np.concatenate([session.run(None, {inp.name: x[i : i + 1]})[0] for i in range(len(files))])
assert np.allclose(probs, single, atol=1e-5), "batch and single-image answers differ"

def shape(v):
    return [d if isinstance(d, int) else str(d) for d in v.shape]

print(json.dumps({
    "metadata": meta,
    "inputs": [{"name": v.name, "type": v.type, "shape": shape(v)} for v in session.get_inputs()],
    "outputs": [{"name": v.name, "type": v.type, "shape": shape(v)} for v in session.get_outputs()],
    "probs": {f: [float(p) for p in row] for f, row in zip(files, probs)},
}))
