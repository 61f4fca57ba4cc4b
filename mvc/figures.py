"""Every figure of the kit, each a function that returns a matplotlib Figure (the notebooks show it, the report
saves it): the paper's Figures 1, 2 and 5 (image grids), 3 and 4 (pipeline diagrams drawn from the code's own
names and params), the accuracy bars and the few-shot curve, copies beside their nearest training image, loss
curves, the caption-embedding map and the data diagnostics."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from mvc.artifacts import class_names, load_caption_embeddings, load_images, load_splits, load_synthetic
from mvc.config import StudyConfig
from mvc.image_measures import nearest_two
from mvc.imaging import to_chw
from mvc.mixing import mix
from mvc.registry import METHODS, mvc_set_names, role_of


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


def png_figure(path: Path, dpi: int = 150) -> plt.Figure:
    """A saved PNG as a Figure of its own size (a figure a stage drew, shown in a notebook)."""
    img = plt.imread(path)
    fig = plt.figure(figsize=(img.shape[1] / dpi, img.shape[0] / dpi))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img)
    ax.axis("off")
    return fig


# ----------------------------------------------------------------------------------------------------------
# data


def class_histogram(splits: pd.DataFrame) -> plt.Figure:
    """Images per class, one bar colour per split."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * splits["class_name"].nunique()), 3.5))
    sns.countplot(data=splits, x="class_name", hue="split", ax=ax,
                  hue_order=[s for s in ("train", "pool", "val", "test") if s in set(splits["split"])])
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


# ----------------------------------------------------------------------------------------------------------
# images


def image_grid(rows: list[tuple[str, list[np.ndarray]]], col_titles: list[str] | None = None,
               size: float = 0.9) -> plt.Figure:
    """A grid of images, one row per entry, labelled on its left; None leaves a gap."""
    n_cols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * size + 1.5, len(rows) * (size + 0.1)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c < len(imgs) and imgs[c] is not None:
                show_image(ax, imgs[c])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if col_titles:
        for c, title in enumerate(col_titles[:n_cols]):
            axes[0, c].set_title(title, fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.3)
    return fig


def _by_source(manifest: pd.DataFrame, images: np.ndarray, source: int) -> list[np.ndarray]:
    """The images generated from one source, in index order."""
    rows = manifest.reset_index(drop=True)
    pick = rows[rows["source_image_id"] == source].sort_values("index")
    return [images[i] for i in pick.index]


def figure1(cfg: StudyConfig, real: dict, splits: pd.DataFrame, synthetic: dict, n: int = 2) -> plt.Figure:
    """Figure 1, compact like the paper's teaser: a column per class; `n` rows each of real images, the naive
    set (the backbone before fine-tuning, same prompts) and MVC images from one real image of the class."""
    train = splits[splits["split"] == "train"]
    mvc_name, naive_name = mvc_set_names(cfg.generate.modes)[0], role_of("naive")
    labels = sorted(train["label"].unique())[: cfg.report.classes_in_figures]
    columns, names = [], []
    for label in labels:
        cls = train[train["label"] == label]
        src = int(cls["image_id"].iloc[0])
        reals = [real[i] for i in cls["image_id"].iloc[:n] if i in real]
        naive = (_by_source(synthetic[naive_name][1], synthetic[naive_name][0], src)[:n]
                 if naive_name in synthetic else [])
        mvc = _by_source(synthetic[mvc_name][1], synthetic[mvc_name][0], src)[:n]
        columns.append((reals, naive, mvc))
        names.append(str(cls["class_name"].iloc[0]))
    groups = [("real", 0), ("naive", 1), ("MVC", 2)] if naive_name in synthetic else [("real", 0), ("MVC", 2)]
    rows = [(f"{name}" if j == 0 else "", [col[g][j] if j < len(col[g]) else None for col in columns])
            for name, g in groups for j in range(n)]
    size = 0.55
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(len(columns) * size + 0.7, len(rows) * size + 0.35),
                             squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.04})
    for r, (label, imgs) in enumerate(rows):
        for c, img in enumerate(imgs):
            ax = axes[r, c]
            if img is not None:
                show_image(ax, img)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for c, name in enumerate(names):
        axes[0, c].set_title(textwrap.shorten(name, 12, placeholder="."), fontsize=7)
    fig.subplots_adjust(left=0.7 / (len(columns) * size + 0.7), right=0.99, top=0.9, bottom=0.01)
    return fig


def figure2(cfg: StudyConfig, real: dict, sources: list[int], synthetic: dict) -> plt.Figure:
    """A real image, then coarse mixes and fine mixes generated from it."""
    rows, titles = [], ["real"]
    for src in sources:
        row = [real[src]]
        for name in ("mvc_coarse", "mvc_fine"):
            if name in synthetic:
                row += [None] + _by_source(synthetic[name][1], synthetic[name][0], src)
        rows.append((f"#{src}", row))
    m = cfg.generate.images_per_source
    for name in ("mvc_coarse", "mvc_fine"):
        if name in synthetic:
            titles += [""] + [name.split("_")[1]] + [""] * (m - 1)
    return image_grid(rows, titles)


def figure5(cfg: StudyConfig, real: dict, sources: list[int], synthetic: dict) -> plt.Figure:
    """A real column per source; MVC rows beneath it; the naive baseline's row last."""
    mvc_name = mvc_set_names(cfg.generate.modes)[0]
    per_src = {s: _by_source(synthetic[mvc_name][1], synthetic[mvc_name][0], s) for s in sources}
    rows = [("real", [real[s] for s in sources])]
    for j in range(cfg.generate.images_per_source):
        rows.append((f"MVC {j + 1}", [per_src[s][j] for s in sources]))
    naive_name = role_of("naive")
    if naive_name in synthetic:
        rows.append(("naive", [_by_source(synthetic[naive_name][1], synthetic[naive_name][0], s)[0]
                               for s in sources]))
    return image_grid(rows)


def _box(ax, xy, text, color):
    ax.add_patch(FancyBboxPatch(xy, 2.2, 0.8, boxstyle="round,pad=0.05", fc=color, ec="black", lw=0.8))
    ax.text(xy[0] + 1.1, xy[1] + 0.4, text, ha="center", va="center", fontsize=7, wrap=True)


def _arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=0.8))


def pipeline_diagram(cfg: StudyConfig, kind: str) -> plt.Figure:
    """Figure 3 (`training`) or Figure 4 (`generation`): the data flow, labelled with this study's params."""
    ft, g, m = cfg.finetune, cfg.generate, cfg.finetune.mixing
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    blue, green, orange, grey = "#cfe2f3", "#d9ead3", "#fce5cd", "#eeeeee"
    if kind == "training":
        _box(ax, (0.2, 3.0), "target image x\n(class y)", grey)
        _box(ax, (0.2, 1.7), f"conditioning image x_c\n(cond_image: {ft.cond_image})", grey)
        _box(ax, (0.2, 0.3), f"captions of class y\nMVC mix: {m.mode}, k={m.k}", grey)
        _box(ax, (3.2, 3.0), "VAE encoder\nz_0 = s E(x), noised to z_t", blue)
        _box(ax, (3.2, 1.7), "VAE encoder\ne_I = E(x_c) (mode)", blue)
        _box(ax, (3.2, 0.3), f"text encoder tau\ne_T (drop {ft.drop_text})", blue)
        _box(ax, (6.4, 2.35), f"concat z_t (+) e_I\nconv_in widened x2\n(drop image {ft.drop_image})", orange)
        _box(ax, (9.4, 1.5), f"UNet eps_theta(., t, e_T)\n{ft.steps} steps, lr {ft.learning_rate}", green)
        _box(ax, (11.7, 1.5), "loss\n||eps - eps_theta||^2", grey)
        for a, b in [((2.4, 3.4), (3.2, 3.4)), ((2.4, 2.1), (3.2, 2.1)), ((2.4, 0.7), (3.2, 0.7)),
                     ((5.4, 3.4), (6.4, 2.9)), ((5.4, 2.1), (6.4, 2.6)), ((8.6, 2.7), (9.4, 2.1)),
                     ((5.4, 0.7), (9.4, 1.7)), ((11.6, 1.9), (11.7, 1.9))]:
            _arrow(ax, a, b)
        ax.set_title("Figure 3: MVC fine-tuning", fontsize=9)
    else:
        _box(ax, (0.2, 3.0), "z_T ~ N(0, I)", grey)
        _box(ax, (0.2, 1.7), "real image of class y", grey)
        _box(ax, (0.2, 0.3), f"captions of class y\nMVC modes: {', '.join(g.modes)}", grey)
        _box(ax, (3.2, 1.7), "VAE encoder\ne_I", blue)
        _box(ax, (3.2, 0.3), f"text encoder + mix\ne_T (k={g.mixing.k}, beta_max={g.mixing.beta_max})", blue)
        _box(ax, (6.4, 1.7), f"UNet, 3 passes/step\ns_T={g.guidance_text}, s_I={g.guidance_image}", green)
        _box(ax, (9.4, 1.7), f"{g.scheduler}, {g.steps} steps", orange)
        _box(ax, (11.7, 1.7), f"VAE decoder\nM={g.images_per_source} per real image", blue)
        for a, b in [((2.4, 3.4), (6.4, 2.4)), ((2.4, 2.1), (3.2, 2.1)), ((2.4, 0.7), (3.2, 0.7)),
                     ((5.4, 2.1), (6.4, 2.1)), ((5.4, 0.7), (6.4, 1.8)), ((8.6, 2.1), (9.4, 2.1)),
                     ((11.6, 2.1), (11.7, 2.1))]:
            _arrow(ax, a, b)
        ax.set_title("Figure 4: generation with MVC", fontsize=9)
    return fig


def loss_curve(loss: pd.DataFrame, ylabel: str = "loss", title: str = "", window: int = 25) -> plt.Figure:
    """A loss per step and its running mean; `ylabel` names what the loss measures."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(loss["step"], loss["loss"], alpha=0.3, lw=0.8, label="per step")
    ax.plot(loss["step"], loss["loss"].rolling(window, min_periods=1).mean(), lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def embedding_map(embeddings: np.ndarray, labels: np.ndarray, class_names: list[str],
                  mixes: dict[str, tuple]) -> plt.Figure:
    """PCA of flattened caption embeddings coloured by class; mixes ({mode: (embeddings, labels)}) drawn among them."""
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(embeddings.reshape(len(embeddings), -1))
    pts = pca.transform(embeddings.reshape(len(embeddings), -1))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for y, name in enumerate(class_names):
        sel = labels == y
        ax.scatter(pts[sel, 0], pts[sel, 1], s=14, color=cmap(y % cmap.N), label=name, alpha=0.7)
    for (mode, (emb, lab)), marker in zip(mixes.items(), ("x", "+", "1", "*")):
        p = pca.transform(emb.reshape(len(emb), -1))
        ax.scatter(p[:, 0], p[:, 1], s=30, marker=marker, c=[cmap(int(y) % cmap.N) for y in lab], label=f"{mode} mix")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def marked_grid(images: np.ndarray, marked: np.ndarray, per_row: int = 8, label: str = "synthetic") -> plt.Figure:
    """Images in rows of `per_row`; the marked ones framed in orange (notebook 05: synthetic replacements)."""
    n_rows = int(np.ceil(len(images) / per_row))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(per_row * 0.8, n_rows * 0.85), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(images):
            ax.axis("off")
            continue
        show_image(ax, images[i])
        if marked[i]:
            for spine in ax.spines.values():
                spine.set_edgecolor("#e69138")
                spine.set_linewidth(3)
    fig.suptitle(f"{int(np.sum(marked))} of {len(images)} images are {label} (orange frame)", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def example_batch_figure(cfg: StudyConfig, batch: pd.DataFrame) -> plt.Figure:
    """The target and conditioning images of an example fine-tuning batch (notebook 03), dropped ones marked."""
    images = load_images(cfg)
    targets = [images[i] for i in batch["target_image_id"]]
    conds = [images[i] for i in batch["condition_image_id"]]
    titles = [("no text" if t else "") + (" no image" if i else "") for t, i in zip(batch["text_dropped"],
                                                                                    batch["image_dropped"])]
    return image_grid([("target x", targets), ("condition x_c", conds)], [t.strip() for t in titles])


def memorization_figure(cfg: StudyConfig, n: int = 8) -> plt.Figure:
    """The `n` images of the first MVC set nearest to a copy, above their nearest labelled training image."""
    splits, images = load_splits(cfg), load_images(cfg)
    train = to_chw(images[splits[splits["split"] == "train"]["image_id"].to_numpy()])
    name = mvc_set_names(cfg.generate.modes)[0]
    imgs, _ = load_synthetic(cfg, name)
    d1, d2, nearest = nearest_two(to_chw(imgs), train)
    order = torch.argsort(d1 / d2.clamp_min(1e-8))[:n]
    top = [imgs[i] for i in order.tolist()]
    bottom = [train[j].permute(1, 2, 0).numpy() for j in nearest[order].tolist()]
    titles = [f"{float(d1[i] / d2[i]):.2f}" for i in order.tolist()]
    return image_grid([(name, top), ("nearest real", bottom)], titles)


def caption_map(cfg: StudyConfig) -> plt.Figure:
    """Caption embeddings (PCA) with one coarse and one fine mix per caption drawn among them."""
    emb = load_caption_embeddings(cfg)
    anchors = np.arange(len(emb.labels))
    m = cfg.generate.mixing
    mixes = {mode: (mix(emb.embeddings, emb.labels, anchors, mode, m.k, m.alpha, m.beta_max, seed=cfg.seed).numpy(),
                    emb.labels) for mode in ("coarse", "fine")}
    return embedding_map(emb.embeddings.numpy(), emb.labels, class_names(load_splits(cfg)), mixes)


# ----------------------------------------------------------------------------------------------------------
# accuracy


def accuracy_bars(table: pd.DataFrame) -> plt.Figure:
    """Top-1 per method with its interval; MVC methods in orange."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ["#e69138" if m in METHODS and METHODS[m].is_mvc else "#6fa8dc" for m in table["method"]]
    ax.bar(table["method"], table["top1"], yerr=table["ci95"], color=colors, capsize=3)
    lo = max(0.0, float((table["top1"] - table["ci95"]).min()) - 5)
    ax.set_ylim(lo, min(100.0, float((table["top1"] + table["ci95"]).max()) + 2))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    return fig


def best_classical(table: pd.DataFrame) -> str | None:
    """The classical augmentation with the highest mean top-1 over the table's rows (levels), or None."""
    classical = [m for m in table["method"].unique() if m in METHODS and METHODS[m].family == "classical"]
    return max(classical, key=lambda m: table.loc[table["method"] == m, "top1"].mean()) if classical else None


def shot_curve(table: pd.DataFrame) -> plt.Figure:
    """Accuracy against labelled images per class (log scale) with intervals: the methods the registry marks for
    the curve (`Method.curve`) and the best classical augmentation, those the study ran."""
    best = best_classical(table)
    ran = set(table["method"])
    shown = [m for m in METHODS if m in ran and (METHODS[m].curve or m == best)]
    colors = {m: ("#3d85c6" if m == best else METHODS[m].color) for m in shown}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, method in enumerate(shown):
        r = table[table["method"] == method]
        x = r["shots"].astype(int) * 1.04 ** (i - (len(shown) - 1) / 2)  # side by side, so the bars stay apart
        ax.errorbar(x, r["top1"], yerr=r["ci95"], marker="o", capsize=3, color=colors[method],
                    label=f"{method} (best classical)" if method == best else method,
                    linewidth=2.2 if method == role_of("under_test") else 1.2)
    ax.set_xscale("log")
    levels = sorted(table["shots"].astype(int).unique())
    ax.set_xticks(levels, [str(v) for v in levels])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
