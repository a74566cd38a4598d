"""The best Python server a user could write for phone photos: FastAPI + ONNX Runtime + Pillow with draft().

Same contract as the reference (../shared/reference/torch_serve.py), so the same load (load.sh +
load.lua) runs against both and against `flora serve`:
    POST /predict                      multipart field `file` ->
        {"model_used": "blue", "prediction": {"class": ..., "confidence": ...},
         "data_collected_at": "collected_data/YYYY-MM-DD/<name>"}   (the upload is saved there)
    POST /admin/switch-model?color=green
    GET  /health
What makes it fast where the reference is not:
  - Pillow's draft(): libjpeg decodes a JPEG directly at 1/2, 1/4 or 1/8 of its size (DCT scaling)
    when the model's input is much smaller, the one-line change a user would make;
  - ImageOps.exif_transpose (phone photos are stored turned, with an EXIF Orientation tag);
  - ONNX Runtime instead of torch (no torch import: ~60 MB instead of ~750 MB);
  - a plain `def` handler: FastAPI runs it in its thread pool, and Pillow's decoder and ONNX
    Runtime release the GIL, so two requests decode and run on the two cores at once.
Preprocessing: draft, exif_transpose, RGB, resize the shorter side to the model's size (bilinear,
Pillow's antialiased one), centre crop, /255, normalise with the checkpoint's mean/std, NCHW.

Model: an ONNX file written by export_onnx.py from a torch_train.py checkpoint (the reference CNN),
with its sidecar MODEL.json ({"classes", "size", "mean", "std"}).
Install (the benchmarks' venv): pip install onnxruntime fastapi uvicorn python-multipart pillow numpy
Run (uploads are saved under ./collected_data/, so cd somewhere scratch):
    cd /tmp/ortserve && VENV/bin/python /path/to/bench/phone/ort_serve.py --model /tmp/ref.onnx --port 8000 [--threads 2]
"""
import argparse
import datetime
import io
import json
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, ImageOps

MODELS = {}  # color -> (session, input name, classes, size, mean, std)
STATE = {"live": "blue"}


def load(path, threads):
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
    return sess, sess.get_inputs()[0].name, meta["classes"], int(meta["size"]), mean, std


def preprocess(data, size, mean, std):
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size, size))  # JPEG only: decode at the smallest DCT scale >= size
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - mean) / std)[None]


@asynccontextmanager
async def lifespan(app):
    path = os.environ["ORT_MODEL"]
    threads = int(os.environ.get("ORT_THREADS", "2"))
    for color in ("blue", "green"):
        MODELS[color] = load(path, threads)
    print(f"loaded blue+green from {path}, onnxruntime {ort.__version__}, intra-op threads {threads}", flush=True)
    yield


app = FastAPI(title="FastAPI + ONNX Runtime + Pillow draft", lifespan=lifespan)


@app.get("/health")
def health():
    return {"status": "ok", "model_used": STATE["live"]}


@app.post("/admin/switch-model")
def switch_model(color: str):
    if color not in MODELS:
        raise HTTPException(status_code=400, detail="color must be 'blue' or 'green'")
    STATE["live"] = color
    return {"message": f"switched to {color}", "model_used": color}


@app.post("/predict")
def predict(file: UploadFile = File(...)):
    data = file.file.read()
    color = STATE["live"]
    sess, name, classes, size, mean, std = MODELS[color]
    try:
        x = preprocess(data, size, mean, std)
    except Exception:
        raise HTTPException(status_code=400, detail="not a readable image")
    logits = sess.run(None, {name: x})[0][0]
    e = np.exp(logits - logits.max())
    probs = e / e.sum()
    index = int(probs.argmax())

    day_dir = Path("collected_data") / datetime.date.today().isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    saved = day_dir / f"{uuid.uuid4().hex[:12]}_{Path(file.filename or 'upload.bin').name}"
    saved.write_bytes(data)
    return {"model_used": color,
            "prediction": {"class": classes[index], "confidence": round(float(probs[index]), 4)},
            "data_collected_at": str(saved)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="FastAPI + ONNX Runtime + Pillow draft() server")
    p.add_argument("--model", required=True, help="ONNX file from export_onnx.py (MODEL.json beside it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--loop", default="asyncio", help="uvicorn event loop: asyncio|uvloop|auto")
    p.add_argument("--http", default="h11", help="uvicorn HTTP parser: h11|httptools|auto")
    a = p.parse_args()
    os.environ["ORT_MODEL"] = str(Path(a.model).resolve())
    os.environ["ORT_THREADS"] = str(a.threads)
    import uvicorn
    uvicorn.run("ort_serve:app", host=a.host, port=a.port, workers=1, loop=a.loop, http=a.http,
                app_dir=str(Path(__file__).resolve().parent), log_level="warning")
