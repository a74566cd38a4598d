#!/usr/bin/env python3
"""PyTorch reference for `cargo bench --bench mobilenet`: torchvision's MobileNetV2 on the CPU.

Set-up: python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install --index-url
https://download.pytorch.org/whl/cpu torch torchvision
Usage: torch_mobilenet.py [STEPS] [SIZE] [BATCH] [WIDTH] [THREADS]  (defaults 10 96 32 0.35 2)
Prints the same BENCH lines as the Rust bench: training img/s (forward, cross-entropy, backward,
Adam on a fixed random batch), eval-mode inference img/s in batches and batch-1 latency.
"""
import sys
import time

import torch
import torchvision

args = sys.argv[1:]
steps = int(args[0]) if len(args) > 0 else 10
size = int(args[1]) if len(args) > 1 else 96
batch = int(args[2]) if len(args) > 2 else 32
width = float(args[3]) if len(args) > 3 else 0.35
torch.set_num_threads(int(args[4]) if len(args) > 4 else 2)
tag = f"width={width} size={size}"

torch.manual_seed(1)
model = torchvision.models.mobilenet_v2(width_mult=width, num_classes=10)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(batch, 3, size, size)
y = torch.arange(batch) % 10


def step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


model.train()
step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(f"BENCH mobilenet train {tag} batch={batch} steps={steps} "
      f"img_per_s={steps * batch / (time.perf_counter() - t0):.1f}")

model.eval()


def rate(inp, reps):
    with torch.inference_mode():
        model(inp)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(inp)
        return reps * inp.shape[0] / (time.perf_counter() - t0)


reps = max(steps * 2, 5)
print(f"BENCH mobilenet infer engine=torch {tag} batch={batch} img_per_s={rate(x, reps):.1f}")
print(f"BENCH mobilenet latency engine=torch {tag} batch=1 ms={1e3 / rate(x[:1], reps * 10):.2f}")
