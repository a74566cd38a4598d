#!/usr/bin/env python3
"""The PyTorch side of bench/train_speed.sh: the bare model step of the reference CNN
(../shared/reference/torch_model.py), as torch_train.py runs it (NCHW, Adam lr 1e-3,
cross-entropy, train mode), on a fixed random batch with no data loading: the counterpart of
`cargo bench --bench train_step`.

Usage: torch_step.py --reference DIR [--steps 30] [--size 64] [--batch 32] [--threads 2]
Prints: BENCH torch_step size=... batch=... steps=... seconds=... img_per_s=...
"""
import argparse
import sys
import time

import torch
import torch.nn as nn


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="folder holding torch_model.py")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=10)
    a = p.parse_args()
    sys.path.insert(0, a.reference)
    from torch_model import SmallCnn  # noqa: E402

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = SmallCnn(a.classes).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(a.batch, 3, a.size, a.size) * 4 - 2
    y = torch.arange(a.batch) % a.classes

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = time.perf_counter() - t0
    print(f"BENCH torch_step size={a.size} batch={a.batch} steps={a.steps} seconds={secs:.2f} "
          f"img_per_s={a.steps * a.batch / secs:.1f}", flush=True)


if __name__ == "__main__":
    main()
