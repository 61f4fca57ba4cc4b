"""Two small ImageFolder datasets made offline, to try `params/imagefolder_cpu.yaml` as a user with their own
images would:

- `shapes`: 6 classes of coloured shapes (circle, square, triangle, star, cross, ring) on coloured backgrounds,
  random size, position and rotation, 48x48 RGB, 100 images per class;
- `glyphs`: 12 classes of letters (A-L) in the fonts that ship with matplotlib, random size, position, rotation
  and stroke, 24x24 greyscale, 40 images per class;
- `textures`: 8 classes of natural colour textures, patches of real photographs that ship with scikit-image and
  scikit-learn (cat fur, coffee, a rocket and its sky, the Hubble deep field, stained tissue, a retina, a flower,
  a Chinese temple), random position, scale, flip and quarter turn, 32x32 RGB, 60 images per class (needs the
  `dev` extra's scikit-image; its photographs are in its wheel, offline).

    python scripts/make_imagefolders.py OUT_DIR        (writes OUT_DIR/shapes/<class>/*.png, OUT_DIR/glyphs/...)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        k, radii = 3, [r]
    elif kind == "square":
        k, radii = 4, [r]
    else:  # star
        k, radii = 10, [r, r * 0.45]
    return [(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / k),
             cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / k)) for i in range(k)]


def shape_image(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One coloured shape on a coloured background."""
    bg, fg = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, int(r / 3)))
    elif kind == "cross":
        w = r / 3
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a) * r, math.sin(a) * r
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fg, width=max(2, int(w)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fg)
    return img


def glyph_image(letter: str, fonts: list[Path], rng: np.random.Generator, size: int = 24) -> Image.Image:
    """One letter in a random matplotlib font, size, position and rotation, grey on grey."""
    canvas = Image.new("L", (size * 2, size * 2), 0)
    while not np.asarray(canvas).any():  # a font without this letter draws nothing: take another
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.uniform(0.6, 0.95) * size))
        ImageDraw.Draw(canvas).text((size + rng.uniform(-3, 3), size + rng.uniform(-3, 3)), letter, fill=255,
                                    font=font, anchor="mm", stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
    canvas = canvas.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR)
    glyph = np.asarray(canvas.crop((size // 2, size // 2, size // 2 + size, size // 2 + size)), dtype=np.float32)
    low, high = sorted(rng.uniform(0, 255, 2))
    return Image.fromarray((low + (high - low) * glyph / 255).astype(np.uint8), mode="L")


TEXTURE_SOURCES = {"fur": "chelsea", "coffee": "coffee", "rocket": "rocket", "space": "hubble_deep_field",
                   "tissue": "immunohistochemistry", "retina": "retina", "flower": "flower.jpg", "temple": "china.jpg"}


def texture_photographs() -> dict[str, np.ndarray]:
    """Each texture class's photograph (H, W, 3 uint8), from scikit-image's and scikit-learn's bundled samples."""
    try:
        from skimage import data
    except ImportError as err:
        raise SystemExit("the textures folder needs scikit-image: pip install -e '.[dev]'") from err
    from sklearn.datasets import load_sample_image

    return {name: np.asarray(load_sample_image(src) if src.endswith(".jpg") else getattr(data, src)())[..., :3]
            for name, src in TEXTURE_SOURCES.items()}


def texture_patch(photo: np.ndarray, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A random square patch of `photo` (a sixth to a third of its shorter side), flipped and turned at random."""
    side = int(rng.uniform(1 / 6, 1 / 3) * min(photo.shape[:2]))
    y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
    patch = np.rot90(photo[y:y + side, x:x + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "triangle", "star", "cross", "ring"):
        folder = args.out / "shapes" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(100):
            shape_image(kind, rng).save(folder / f"{i:03d}.png")
    import matplotlib

    fonts = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))
    fonts = [f for f in fonts if f.name.startswith(("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr", "cmb", "cmss",
                                                    "cmtt", "cmmi")) and "Display" not in f.name]
    for letter in "ABCDEFGHIJKL":
        folder = args.out / "glyphs" / letter.lower()
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(40):
            glyph_image(letter, fonts, rng).save(folder / f"{i:03d}.png")
    for name, photo in texture_photographs().items():
        folder = args.out / "textures" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(60):
            texture_patch(photo, rng).save(folder / f"{i:03d}.png")
    print(f"wrote {args.out / 'shapes'} (6 classes x 100, 48 px RGB), {args.out / 'glyphs'} (12 x 40, 24 px grey) and "
          f"{args.out / 'textures'} (8 x 60, 32 px RGB)")


if __name__ == "__main__":
    main()
