"""Figures shared by the notebooks and the report; each returns a matplotlib Figure and can save PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def save(fig: plt.Figure, path: Path, pdf: bool = True) -> Path:
    """Save a figure as PNG (and PDF beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path


def show_image(ax: plt.Axes, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def class_histogram(splits: pd.DataFrame) -> plt.Figure:
    """Images per class, one bar colour per split."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * splits["class_name"].nunique()), 3.5))
    sns.countplot(data=splits, x="class_name", hue="split", ax=ax, hue_order=[s for s in ("train", "pool", "val", "test")
                                                                               if s in set(splits["split"])])
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def sample_grid(images: np.ndarray, splits: pd.DataFrame, per_class: int = 8, max_classes: int = 10,
                split: str = "train", seed: int = 0) -> plt.Figure:
    """A row of training images per class."""
    rng = np.random.default_rng(seed)
    subset = splits[splits["split"] == split]
    labels = sorted(subset["label"].unique())[:max_classes]
    fig, axes = plt.subplots(len(labels), per_class, figsize=(per_class * 0.9, len(labels) * 0.95), squeeze=False)
    for r, label in enumerate(labels):
        rows = subset[subset["label"] == label]
        ids = rng.choice(rows["image_id"].to_numpy(), size=min(per_class, len(rows)), replace=False)
        for c in range(per_class):
            ax = axes[r, c]
            if c < len(ids):
                show_image(ax, images[ids[c]])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(rows["class_name"].iloc[0], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig
