"""Export the reference CNN (a torch_train.py checkpoint, or random weights) to ONNX for ort_serve.py.

Writes OUT (e.g. /tmp/ref.onnx) and OUT with .json ({"classes", "size", "mean", "std"}), then checks
that ONNX Runtime gives the same logits as torch on a random input (max abs difference printed).
Uses torch.onnx.export(..., dynamo=False): the TorchScript exporter, which needs only the `onnx`
package (the dynamo exporter also wants onnxscript). Input `input` [N, 3, S, S] (N dynamic),
output `logits` [N, classes].
Run: VENV/bin/python export_onnx.py --ckpt /tmp/ref.pt --out /tmp/ref.onnx [--shared ../shared]
"""
import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="torch_train.py --save checkpoint (default: random init, 10 classes)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64, help="input size without --ckpt (default 64)")
    p.add_argument("--shared", default=os.environ.get("FLORA_SHARED"),
                   help="the folder holding reference/torch_model.py (default $FLORA_SHARED)")
    a = p.parse_args()
    if not a.shared:
        sys.exit("--shared (or FLORA_SHARED) must name the folder that holds reference/")
    sys.path.insert(0, str(Path(a.shared) / "reference"))
    from torch_model import MEAN, STD, load_model  # noqa: E402

    model, classes, _ = load_model(a.ckpt, size=a.size)
    size, mean, std = a.size, MEAN, STD
    if a.ckpt:
        ck = torch.load(a.ckpt, map_location="cpu", weights_only=True)
        size, mean, std = ck["size"], ck["mean"], ck["std"]
    x = torch.randn(2, 3, size, size)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
    torch.onnx.export(model, (x,), a.out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    Path(a.out).with_suffix(".json").write_text(json.dumps(
        {"classes": list(classes), "size": size, "mean": list(mean), "std": list(std)}) + "\n")
    import onnxruntime as ort
    sess = ort.InferenceSession(a.out, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(want - got).max())
    print(f"exported {a.out} ({len(classes)} classes, {size} px); onnxruntime vs torch max abs diff {diff:.2e}")
    if diff > 1e-3:
        sys.exit("ONNX Runtime disagrees with torch")


if __name__ == "__main__":
    main()
