"""Captioners: the offline attribute captioner and BLIP-2. Each turns a batch of uint8 images (N, H, W, C) into
one caption each; `caption_text` forms what the text encoder sees, `prompt(y) + ", " + caption(x)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from mvc.paths import hub_error
from mvc.progress import quiet_library_bars

if TYPE_CHECKING:
    from mvc.config import CaptionConfig


class Captioner(Protocol):
    """Turns a batch of uint8 images (N, H, W, C) into one caption each."""

    def __call__(self, images: np.ndarray) -> list[str]: ...


def _mean_run(mask: np.ndarray) -> float:
    """Mean length of the runs of True along the rows of a 2-D mask."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return float((ends[1] - starts[1]).mean()) if len(starts[1]) else 0.0


def _bin(value: float, edges: tuple[float, ...], words: tuple[str, ...]) -> str:
    return words[int(np.searchsorted(edges, value, side="right"))]


class AttributeCaptioner:
    """Describes what can be measured in an image, in words: no class names, no weights, no network.

    The foreground ("ink") is what differs from the median of the image border. Measured: stroke or edge
    thickness (the shorter of the mean horizontal and vertical ink runs), slant (shear of the foreground's second
    moments),
    size and position of the mass, brightness, contrast and dominant colour. Identical images get
    identical captions; images that differ in one of these get different ones.
    """

    COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")

    def __init__(self, threshold: float = 0.25):
        self.threshold = threshold

    def describe(self, image: np.ndarray) -> str:
        img = image.astype(np.float32) / 255.0
        if img.ndim == 2:
            img = img[..., None]
        grey = img.mean(axis=-1)
        h, w = grey.shape
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        background = float(np.median(border))
        mask = np.abs(grey - background) > self.threshold
        words = []
        if mask.sum() >= 2:
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            width = min(_mean_run(mask), _mean_run(mask.T)) / max(h, w)  # stroke width: the shorter mean ink run
            words.append(_bin(width, (0.15, 0.35), ("thin strokes", "medium strokes", "thick strokes")))
            cy, cx = ys.mean(), xs.mean()
            var_y = ((ys - cy) ** 2).mean()
            shear = ((xs - cx) * (cy - ys)).mean() / var_y if var_y > 0 else 0.0
            words.append(_bin(shear, (-0.25, -0.08, 0.08, 0.25),
                              ("strongly slanted left", "slanted left", "upright", "slanted right",
                               "strongly slanted right")))
            area = (y1 - y0) * (x1 - x0) / (h * w)
            words.append(_bin(area, (0.3, 0.55), ("small", "medium sized", "large")))
            aspect = (x1 - x0) / (y1 - y0)
            words.append(_bin(aspect, (0.6, 1.3), ("narrow", "square", "wide")))
            vert = _bin(cy / h, (0.42, 0.58), ("high", "", "low"))
            horiz = _bin(cx / w, (0.42, 0.58), ("left", "", "right"))
            words.append(" ".join(p for p in (vert, horiz) if p) + " in the frame" if vert or horiz else "centred")
        else:
            words.append("almost empty")
        words.append(_bin(grey.mean(), (0.25, 0.6), ("dark", "mid-toned", "bright")))
        words.append(_bin(grey.std(), (0.2, 0.35), ("low contrast", "medium contrast", "high contrast")))
        words.append(self._colour(img, mask))
        return ", ".join(words)

    def _colour(self, img: np.ndarray, mask: np.ndarray) -> str:
        fg = img[mask] if mask.any() else img.reshape(-1, img.shape[-1])
        if img.shape[-1] == 1 or float(np.ptp(fg.mean(axis=0))) < 0.08:
            level = float(fg.mean())
            return "white" if level > 0.7 else "black" if level < 0.3 else "grey"
        r, g, b = fg.mean(axis=0)
        mx, mn = max(r, g, b), min(r, g, b)
        if mx == r:
            hue = ((g - b) / (mx - mn)) % 6
        elif mx == g:
            hue = (b - r) / (mx - mn) + 2
        else:
            hue = (r - g) / (mx - mn) + 4
        return self.COLOURS[int(hue / 6 * len(self.COLOURS)) % len(self.COLOURS)]

    def __call__(self, images: np.ndarray) -> list[str]:
        return [self.describe(im) for im in images]


class Blip2Captioner:
    """BLIP-2 through transformers: `Blip2ForConditionalGeneration` and its processor, batched.

    Half precision (fp16) on a GPU, fp32 on the CPU. `question` is the optional text prompt, e.g.
    "Question: what is in the picture? Answer:".
    """

    def __init__(self, model: str, question: str | None = None, max_new_tokens: int = 30, device: str = "cpu"):
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        quiet_library_bars()
        try:
            self.processor = Blip2Processor.from_pretrained(model)
            self.model = Blip2ForConditionalGeneration.from_pretrained(model, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as err:
            raise hub_error(model, "caption.model", err) from err
        self.question, self.max_new_tokens, self.device, self.dtype = question, max_new_tokens, device, dtype

    def __call__(self, images: np.ndarray) -> list[str]:
        import torch
        from PIL import Image

        pil = [Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).convert("RGB") for im in images]
        kwargs = {"text": [self.question] * len(pil)} if self.question else {}
        inputs = self.processor(images=pil, return_tensors="pt", **kwargs).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if self.question:  # decoder-only language models echo the prompt
            out = out[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() or "an image" for t in texts]


def attribute_captioner(cfg: CaptionConfig, device: str = "cpu") -> AttributeCaptioner:
    return AttributeCaptioner()


def blip2_captioner(cfg: CaptionConfig, device: str = "cpu") -> Blip2Captioner:
    return Blip2Captioner(cfg.model, cfg.question, cfg.max_new_tokens, device)


def blip2_parameters(cfg: CaptionConfig) -> int:
    """BLIP-2's parameter count from its cached config; blip2-opt-2.7b's (3.74 B) when it is not cached."""
    try:
        from accelerate import init_empty_weights
        from transformers import Blip2Config, Blip2ForConditionalGeneration

        from mvc.paths import resolve_path

        local = resolve_path(cfg.model)
        config = Blip2Config.from_pretrained(str(local) if local.exists() else cfg.model, local_files_only=True)
        with init_empty_weights():
            model = Blip2ForConditionalGeneration(config)
        total = sum(p.numel() for p in model.parameters())
        out, inp = model.language_model.get_output_embeddings(), model.language_model.get_input_embeddings()
        if getattr(config.text_config, "tie_word_embeddings",
                   False) and out is not None and out.weight is not inp.weight:
            total -= out.weight.numel()  # tied when loaded (OPT's output layer is its input embedding): counted once
        return total
    except (OSError, ValueError):
        return 3_744_761_856


def caption_text(prompt_template: str, class_name: str, caption: str) -> str:
    """`prompt(y) + ", " + caption(x)`."""
    return f"{prompt_template.format(name=class_name)}, {caption}"


def top_words(captions: pd.DataFrame, class_names: list[str], n: int = 5) -> pd.DataFrame:
    """The most frequent caption phrases per class (the comma-separated parts of `caption`)."""
    rows = []
    for label, group in captions.groupby("label"):
        counts = group["caption"].str.split(", ").explode().value_counts()
        rows.append({"class": class_names[label], **{f"#{i + 1}": f"{w} ({c})" for i, (w, c) in
                                                      enumerate(counts.head(n).items())}})
    return pd.DataFrame(rows).set_index("class")
