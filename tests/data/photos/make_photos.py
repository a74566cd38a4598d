"""Makes tests/data/photos/ from real photographs shipped by PyPI (and Debian) packages.

upright/<name>.jpg   six colour photographs, shorter side 320 px, stored plain (no EXIF).
oriented/<name>-<o>.jpg  the flower photo stored the way a phone stores it, for each of the
                     8 EXIF orientations o: the pixels turned/mirrored by the inverse of o and
                     the Orientation tag set to o, so a viewer that applies the tag shows
                     upright/flower.jpg. Written by Pillow, independently of flora's decoder.

Sources (see README.md for licences): scikit-learn's sklearn/datasets/images/{china,flower}.jpg
(CC BY 2.0) and scikit-image's skimage/data/{chelsea,coffee,rocket,astronaut}.png
(public domain / CC0). Run: python make_photos.py WHEEL_DIR  (a folder holding the
scikit-learn and scikit-image wheels: pip download --no-deps scikit-learn scikit-image).
Needs Pillow.
"""
import io
import sys
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

SOURCES = {
    "flower": ("scikit_learn", "sklearn/datasets/images/flower.jpg"),
    "china": ("scikit_learn", "sklearn/datasets/images/china.jpg"),
    "chelsea": ("scikit_image", "skimage/data/chelsea.png"),
    "coffee": ("scikit_image", "skimage/data/coffee.png"),
    "rocket": ("scikit_image", "skimage/data/rocket.jpg"),
    "astronaut": ("scikit_image", "skimage/data/astronaut.png"),
}
# The transpose that undoes what a viewer does for orientation o (Pillow's exif_transpose
# applies 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270,
# 7 TRANSVERSE, 8 ROTATE_90).
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def read(wheels: Path, prefix: str, member: str) -> Image.Image:
    wheel = next(wheels.glob(prefix + "-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return Image.open(io.BytesIO(z.read(member))).convert("RGB")


def main() -> None:
    wheels = Path(sys.argv[1])
    out = Path(__file__).resolve().parent
    (out / "upright").mkdir(exist_ok=True)
    (out / "oriented").mkdir(exist_ok=True)
    for name, (prefix, member) in SOURCES.items():
        img = read(wheels, prefix, member)
        scale = 320 / min(img.size)
        # Sides that are multiples of 16 keep JPEG blocks aligned under every rotation.
        size = (int(img.width * scale) // 16 * 16, int(img.height * scale) // 16 * 16)
        img = ImageOps.fit(img, size, Image.Resampling.LANCZOS)
        img.save(out / "upright" / f"{name}.jpg", quality=92)
        if name != "flower":
            continue
        for o in range(1, 9):
            stored = img.transpose(INVERSE[o]) if o in INVERSE else img.copy()
            exif = Image.Exif()
            exif[0x0112] = o
            assert ImageOps.exif_transpose(_tagged(stored, o)).tobytes() == img.tobytes()
            stored.save(out / "oriented" / f"{name}-{o}.jpg", quality=92, exif=exif)
    for p in sorted(out.rglob("*.jpg")):
        print(p.relative_to(out), Image.open(p).size, p.stat().st_size)


def _tagged(img: Image.Image, o: int) -> Image.Image:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = o
    img.save(buf, format="PNG", exif=exif)
    return Image.open(io.BytesIO(buf.getvalue()))


if __name__ == "__main__":
    main()
