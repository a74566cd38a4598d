#!/usr/bin/env python3
"""ONNX Runtime's inference speed on an exported flora model, for bench/onnx.sh.

usage: ort_infer.py MODEL.onnx BATCH THREADS
Float NCHW input (or uint8 NHWC for a --with-preprocess export), every graph optimisation on,
intra-op threads THREADS, sequential execution. Prints one `BENCH ort ...` line: img/s over
batches of BATCH for at least 3 s, and the median batch-1 latency over 200 runs.
"""
import sys
import time

import numpy as np
import onnxruntime as ort

path, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
shape = [batch] + list(inp.shape[1:])
rng = np.random.default_rng(1)
if inp.type == "tensor(uint8)":
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
else:
    x = rng.uniform(-2, 2, size=shape).astype(np.float32)
s.run(None, {inp.name: x})
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3.0:
    s.run(None, {inp.name: x})
    n += batch
img_s = n / (time.perf_counter() - t0)
times = []
for i in range(200):
    one = x[i % batch : i % batch + 1]
    t = time.perf_counter()
    s.run(None, {inp.name: one})
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(f"BENCH ort img_s={img_s:.1f} b1_ms={times[len(times) // 2]:.3f} version={ort.__version__}")
