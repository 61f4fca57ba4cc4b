"""The paper's figures, drawn from a study's outputs: Figures 1, 2 and 5 (image grids), Figures 3 and 4
(pipeline diagrams drawn from the code's own names and params), the loss curve and the caption-embedding map."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from mvc.config import StudyConfig
from mvc.plots import show_image


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
    mvc_name = next(k for k in synthetic if k.startswith("mvc_"))
    labels = sorted(train["label"].unique())[: cfg.report.classes_in_figures]
    columns, names = [], []
    for label in labels:
        cls = train[train["label"] == label]
        src = int(cls["image_id"].iloc[0])
        reals = [real[i] for i in cls["image_id"].iloc[:n] if i in real]
        naive = _by_source(synthetic["naive"][1], synthetic["naive"][0], src)[:n] if "naive" in synthetic else []
        mvc = _by_source(synthetic[mvc_name][1], synthetic[mvc_name][0], src)[:n]
        columns.append((reals, naive, mvc))
        names.append(str(cls["class_name"].iloc[0]))
    groups = [("real", 0), ("naive", 1), ("MVC", 2)] if "naive" in synthetic else [("real", 0), ("MVC", 2)]
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
    mvc_name = next(k for k in synthetic if k.startswith("mvc_"))
    per_src = {s: _by_source(synthetic[mvc_name][1], synthetic[mvc_name][0], s) for s in sources}
    rows = [("real", [real[s] for s in sources])]
    for j in range(cfg.generate.images_per_source):
        rows.append((f"MVC {j + 1}", [per_src[s][j] for s in sources]))
    if "naive" in synthetic:
        rows.append(("naive", [_by_source(synthetic["naive"][1], synthetic["naive"][0], s)[0] for s in sources]))
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


def embedding_map(embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], mixes: dict[str, tuple]) -> plt.Figure:
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
