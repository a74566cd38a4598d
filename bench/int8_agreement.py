#!/usr/bin/env python3
"""flora's INT8 export against ONNX Runtime's own quantizer, on the same float model.

usage: int8_agreement.py FLOAT.onnx FLORA_INT8.onnx CALIBRATION_DIR TEST_DIR [THREADS]

FLOAT.onnx and FLORA_INT8.onnx come from `flora export` and `flora export --int8` of one run;
CALIBRATION_DIR and TEST_DIR are folder-per-class image sets (the run's training images and its
test images). Quantizes FLOAT.onnx with onnxruntime.quantization.quantize_static as its docs
suggest (QDQ, per-channel int8 weights, uint8 activations) with MinMax, Entropy and Percentile
calibration on the same images, then prints for each INT8 model the top-1 agreement with the
float model on TEST_DIR and its img/s under ONNX Runtime (batch 32, THREADS threads, default 2)
beside the float model's. Preprocessing follows the model's metadata (flora.mean, flora.std,
imgsz): resize to the side, then (pixel / 255 - mean) / std.
"""
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

float_path, flora_int8, calib_dir, test_dir = sys.argv[1:5]
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
meta = {p.key: p.value for p in onnx.load(float_path, load_external_data=False).metadata_props}
mean = np.array(json.loads(meta["flora.mean"]), np.float32)
std = np.array(json.loads(meta["flora.std"]), np.float32)
side = json.loads(meta["imgsz"])[0]
classes = set(json.loads(meta["names"]).values())


def load(path):
    from PIL import Image
    im = Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)
    return ((np.asarray(im, np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]


def files(root):
    return sorted(p for p in glob.glob(os.path.join(root, "*", "*"))
                  if os.path.basename(os.path.dirname(p)) in classes)


calib = files(calib_dir)[:256]
test = np.concatenate([load(p) for p in files(test_dir)])


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{"images": load(p)} for p in calib])

    def get_next(self):
        return next(self.it, None)


def session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def speed(s):
    x = np.resize(test, (32,) + test.shape[1:])
    s.run(None, {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        s.run(None, {"images": x})
        n += 32
    return n / (time.perf_counter() - t0)


reference = session(float_path)
want = reference.run(None, {"images": test})[0].argmax(1)
print(f"{len(test)} test images, {len(calib)} calibration images, {threads} threads, "
      f"onnxruntime {ort.__version__}")
print(f"{'model':<34} {'agree':>9} {'img/s':>9}")
print(f"{'float':<34} {'':>9} {speed(reference):>9.0f}")
tmp = tempfile.mkdtemp()
models = [("flora export --int8", flora_int8)]
for method in [CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile]:
    out = os.path.join(tmp, f"{method.name}.onnx")
    quantize_static(float_path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method)
    models.append((f"ort quantize_static {method.name}", out))
for name, path in models:
    s = session(path)
    got = s.run(None, {"images": test})[0].argmax(1)
    print(f"{name:<34} {(got == want).sum():>4}/{len(want):<4} {speed(s):>9.0f}")
