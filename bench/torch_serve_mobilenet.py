#!/usr/bin/env python3
"""The FastAPI + PyTorch reference server (../shared/reference/torch_serve.py), serving
torchvision's MobileNetV2 instead of the reference CNN, for `MODEL=mobilenet_v2 bench/serve.sh`.

Same app, same contract, same upload saving: this imports the reference module and replaces only
its model loader, so the comparison with `flora serve` differs in the model alone.
Set-up: the venv of ../shared/reference/README.md (torch, torchvision, fastapi, uvicorn,
python-multipart).
Usage (cd somewhere scratch: uploads go to ./collected_data/):
    torch_serve_mobilenet.py --width 0.35 --size 96 [--classes 10] [--port 8000] [--threads N]
The weights are torchvision's random initialisation (seed 0) in eval mode: speed does not depend
on them, and no ImageNet file can be downloaded here.
"""
import argparse
import os
import sys
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--width", type=float, default=0.35)
p.add_argument("--size", type=int, default=96)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=8000)
p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"),
               help="the folder holding reference/ (default ../shared)")
a = p.parse_args()

sys.path.insert(0, str(Path(a.shared) / "reference"))
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import transforms  # noqa: E402

import torch_serve  # noqa: E402  the reference app


def load_mobilenet(_ckpt=None):
    """(model in eval mode, class names, eval transform), as torch_model.load_model returns."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=a.width, num_classes=a.classes)
    transform = transforms.Compose([
        transforms.Resize(a.size), transforms.CenterCrop(a.size), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    return model.eval(), [f"class_{i}" for i in range(a.classes)], transform


torch_serve.load_model = load_mobilenet
if a.threads:
    os.environ["REF_THREADS"] = str(a.threads)

import uvicorn  # noqa: E402

uvicorn.run(torch_serve.app, host=a.host, port=a.port, loop="asyncio", http="h11", log_level="warning")
