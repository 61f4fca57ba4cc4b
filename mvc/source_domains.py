"""Labelled source domains for the surrogate's pretraining: images of the target classes that are not the target
domain, as Stable Diffusion's pretraining knows "a cat" but not the target dataset's cats. For digits: printed
digits rendered offline from the fonts that ship with matplotlib (DejaVu, STIX, Computer Modern), with random size,
position, rotation and weight."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from mvc.config import StudyConfig

DIGIT_CHARACTERS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                    "seven": "7", "eight": "8", "nine": "9"}
FONT_FAMILIES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmtt10")


def matplotlib_fonts() -> list[Path]:
    """The TrueType fonts of matplotlib's data folder that draw ordinary digits and letters."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(f for f in folder.glob("*.ttf") if f.name.startswith(FONT_FAMILIES) and "Display" not in f.name)


# Font size (share of the image side), shift (share of the side) and rotation (degrees), drawn uniformly. The digits
# fill the frame as scikit-learn's do: at 16 px an RBF SVM trained on 1,000 of them reads 83% of new ones (with
# the earlier 0.55-0.9 size, 0.12 shift and 15 degrees, 44%: too small to carry the class, and the surrogate
# pretrained on them drew no recognisable digit from a class prompt).
FONT_SCALE, MAX_SHIFT, MAX_ROTATION = (0.8, 1.1), 0.06, 8.0


def render_character(char: str, font: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """One printed character, white on black, random size, position, rotation and stroke: uint8 (size, size)."""
    canvas = Image.new("L", (size * 2, size * 2), 0)
    face = ImageFont.truetype(str(font), max(4, int(rng.uniform(*FONT_SCALE) * size)))
    ImageDraw.Draw(canvas).text((size + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * size,
                                 size + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * size),
                                char, fill=255, font=face, anchor="mm", stroke_width=int(rng.integers(0, 2)),
                                stroke_fill=255)
    canvas = canvas.rotate(rng.uniform(-MAX_ROTATION, MAX_ROTATION), resample=Image.Resampling.BILINEAR)
    return np.asarray(canvas.crop((size // 2, size // 2, size // 2 + size, size // 2 + size)), dtype=np.uint8)


def printed_digits(class_names: list[str], per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` printed digits of each class (label = position in `class_names`): uint8 (N, size, size, 1)."""
    unknown = [n for n in class_names if n not in DIGIT_CHARACTERS]
    if unknown:
        raise ValueError(f"backbone.surrogate.source_domain: printed_digits draws the classes zero..nine; the study "
                         f"has {unknown}: set source_domain to none")
    fonts = matplotlib_fonts()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(class_names):
        for _ in range(per_class):
            images.append(render_character(DIGIT_CHARACTERS[name], fonts[rng.integers(len(fonts))], size, rng))
            labels.append(label)
    return np.stack(images)[..., None], np.array(labels)


def source_domain_images(cfg: StudyConfig, names: list[str], labels: bool = False):
    """The labelled source-domain images, uint8 (N, H, W, C) at the data resolution (None when there are none),
    with their labels (indices into `names`) if `labels`."""
    s = cfg.backbone.surrogate
    if cfg.backbone.kind != "surrogate" or s.source_domain == "none":
        return (None, None) if labels else None
    images, y = printed_digits(names, s.source_per_class, cfg.data.resolution, s.seed)
    images = np.repeat(images, 3, axis=-1) if cfg.data.channels == 3 else images
    return (images, y) if labels else images
