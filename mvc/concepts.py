"""A testbed with known concepts (dataset `concepts`, `params/concepts.yaml`): coloured shapes drawn in-process,
offline, whose class is the shape and whose other factors (colour, background pattern, size, position) are known
for every image. Each class's labelled shots may only be drawn from a few combinations of the other factors
(`LABELLED`), so that in the shots those factors correlate with the class; the pool, val and test cover every
combination uniformly. Whether a generator makes images of combinations the shots never showed (the paper's
"diverse yet similar") is then measurable (`mvc.factor_probes`), and the decorrelated test split says whether a
classifier learnt the shape or the shortcut.

`FactorCaptioner` stands where BLIP-2 stands: it reads the four factors back from the pixels (exactly, on these
images) and names them, never the shape."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from mvc.datasets import Item, Reader

SHAPES = ["circle", "square", "triangle", "cross"]  # the classes
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (225, 195, 30)}
BACKGROUNDS = ["plain", "striped", "dotted"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right"]
FACTORS = {"colour": list(COLOURS), "background": BACKGROUNDS, "size": SIZES, "position": POSITIONS}
SIDE = 16  # the digits study's resolution: the surrogate's two-level VAE keeps a shape there (8x8 latents)
GREY, DARK = 205, 150  # the background and its pattern: unsaturated, so the shape is the only saturated region
IMAGES_PER_CLASS = 300


def labelled_combinations(label: int) -> dict[str, set[str]]:
    """The factor values class `label`'s labelled shots may have: two colours, one background, one size (any
    position): 1 in 12 of its images, so that colour, background and size each predict the class in the shots."""
    colours = list(COLOURS)
    return {"colour": {colours[label % 4], colours[(label + 1) % 4]}, "background": {BACKGROUNDS[label % 3]},
            "size": {SIZES[label % 2]}, "position": set(POSITIONS)}


def factors_of(index: int, seed: int = 0) -> dict[str, str]:
    """The shape (class) and the factors of image `index`, drawn uniformly and independently (seeded)."""
    rng = np.random.default_rng([seed, index])
    out = {"shape": SHAPES[index % len(SHAPES)]}
    out.update({name: values[int(rng.integers(len(values)))] for name, values in FACTORS.items()})
    return out


def labellable(factors: dict[str, str]) -> bool:
    """True when the image's combination is one its class's labelled shots may have."""
    allowed = labelled_combinations(SHAPES.index(factors["shape"]))
    return all(factors[k] in allowed[k] for k in FACTORS)


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, radii = 4, [r * 0.95]
    elif shape == "triangle":
        k, radii = 3, [r * 1.1]
    else:  # cross: 12 corners
        a, b = r, r * 0.38
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b),
               (-b, a)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    turns = [angle + 2 * math.pi * i / k for i in range(k)]
    return [(cx + radii[0] * math.cos(t), cy + radii[0] * math.sin(t)) for t in turns]


def render(index: int, seed: int = 0) -> Image.Image:
    """Image `index` at 16 px: its background pattern, then its shape in its colour, size and half of the image."""
    f = factors_of(index, seed)
    rng = np.random.default_rng([seed, index, 1])
    pixels = np.full((SIDE, SIDE), GREY, np.uint8)
    if f["background"] == "striped":
        pixels[(np.arange(SIDE) // 2) % 2 == 0, :] = DARK
    elif f["background"] == "dotted":
        phase = int(rng.integers(2))
        pixels[phase::4, phase::4] = DARK
    img = Image.fromarray(pixels).convert("RGB")
    r = 4.3 if f["size"] == "small" else 6.7  # large enough that the surrogate's VAE keeps the outline
    cx = (6.5 if f["position"] == "left" else 9.5) + rng.uniform(-0.3, 0.3)
    cy = 8 + rng.uniform(-0.5, 0.5)
    draw = ImageDraw.Draw(img)
    colour = COLOURS[f["colour"]]
    if f["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_outline(f["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return img


class ConceptsReader(Reader):
    """The concepts testbed: `IMAGES_PER_CLASS` images of each shape, drawn in-process (no data.root)."""

    layout = "  (none: the images are drawn in-process)"
    url = "mvc.concepts (offline)"

    def items(self) -> list[Item]:
        out = []
        for i in range(IMAGES_PER_CLASS * len(SHAPES)):
            f = factors_of(i)
            out.append(Item(f"concepts#{i}", f["shape"], labellable=labellable(f)))
        return out

    def class_order(self, classes: list[str]) -> list[str]:
        return sorted(classes, key=SHAPES.index)

    def read(self, item: Item) -> Image.Image:
        return render(int(item.source.split("#")[1]))


def source_factors(source: str, seed: int = 0) -> dict[str, str]:
    """The factors of a stored image from its `source` (`concepts#<index>`)."""
    return factors_of(int(source.split("#")[1]), seed)


def read_factors(images: np.ndarray) -> list[dict[str, str]]:
    """The four factors read back from uint8 images (N, 16, 16, 3) of the testbed: the colour of the saturated
    pixels, their extent (size) and side (position), and the pattern of the unsaturated ones (background)."""
    out = []
    palette = np.array(list(COLOURS.values()), float)
    for img in np.asarray(images, float):
        sat = img.max(-1) - img.min(-1)
        mask = sat > 60
        if not mask.any():
            out.append({"colour": "grey", "background": "plain", "size": "small", "position": "left"})
            continue
        colour = list(COLOURS)[int(((palette - img[mask].mean(0)) ** 2).sum(1).argmin())]
        ys, xs = np.nonzero(mask)
        grey = img[..., 0][~mask]
        dark_share = float((grey < (GREY + DARK) / 2).mean())
        dark = np.where(~mask, (img[..., 0] < (GREY + DARK) / 2).astype(float), np.nan)
        visible = (~mask).any(1)
        row_dark = np.nanmean(dark[visible], axis=1)  # stripes: whole rows dark or light
        striped = np.std(row_dark) > 0.3
        background = "striped" if striped else "dotted" if dark_share > 0.02 else "plain"
        reach = np.hypot(ys - ys.mean(), xs - xs.mean()).max()  # the farthest shape pixel from its centre
        out.append({"colour": colour, "background": background, "size": "large" if reach > 5.6 else "small",
                    "position": "left" if xs.mean() < (SIDE - 1) / 2 else "right"})
    return out


class FactorCaptioner:
    """Captions of the testbed that name its four factors read from the pixels (`read_factors`), never the shape:
    "a red shape, small, on the left, on a striped background". A documented stand-in for BLIP-2, whose captions of
    such images would name the same things."""

    def __call__(self, images: np.ndarray) -> list[str]:
        return [f"a {f['colour']} shape, {f['size']}, on the {f['position']}, on a {f['background']} background"
                for f in read_factors(images)]
