"""../shared/reference/torch_train.py with Pillow's draft() in the DataLoader's image loader.

The same script, arguments and output (RESULT line) as the reference; the only change is
torchvision's PIL loader: Image.open -> draft("RGB", (S, S)) -> ImageOps.exif_transpose ->
convert("RGB"), S from --size. That is the one-line change a torch user could make for phone
photos; the reference's loader (open + convert) decodes every 12-MP JPEG whole and ignores the
EXIF orientation.
Run: VENV/bin/python torch_train_draft.py --shared ../shared --data DIR --epochs 1 --size 64 [...]
"""
import os
import sys
from pathlib import Path

args = sys.argv[1:]
shared = os.environ.get("FLORA_SHARED")
if "--shared" in args:
    i = args.index("--shared")
    shared = args[i + 1]
    del args[i:i + 2]
if not shared:
    sys.exit("--shared (or FLORA_SHARED) must name the folder that holds reference/")
size = int(args[args.index("--size") + 1]) if "--size" in args else 64
sys.argv = [sys.argv[0]] + args
sys.path.insert(0, str(Path(shared) / "reference"))

import torchvision.datasets.folder as folder  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402


def draft_loader(path):
    with open(path, "rb") as f:
        im = Image.open(f)
        im.draft("RGB", (size, size))
        return ImageOps.exif_transpose(im).convert("RGB")


folder.pil_loader = draft_loader  # default_loader looks it up at call time; forked workers inherit it

import torch_train  # noqa: E402

torch_train.main()
