"""Stage `report`: the paper's figures and tables for one study and `reports/<study>/index.html`, which reads
like a results section: the headline (main accuracy table and Figure 1), the method's figures, ablations and
tests, image metrics, then diagnostics. Order, numbering and captions come from one registry, `REPORT_ITEMS`.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mvc import figures
from mvc.artifacts import (class_names, diffusion_images, load_backbone_loss, load_caption_embeddings,
                           load_image_metrics, load_images, load_loss, load_results, load_splits, load_synthetic,
                           shots_label, synthetic_set_names)
from mvc.config import StudyConfig, config_to_yaml
from mvc.image_measures import nearest_two
from mvc.imaging import tensor_to_images, to_chw
from mvc.io import write_text
from mvc.mixing import mix
from mvc.paths import REPO_ROOT
from mvc.plots import class_histogram, sample_grid, save
from mvc.stages import notebook_stages
from mvc.state import stage, stage_info
from mvc.statistics import METHOD_ORDER, MVC_METHODS, ablation_table, accuracy_table, paired_tests, shots_table

SECTIONS = ("Main result", "Few-shot curve", "What the method generates", "Ablations and tests", "Image metrics",
            "Diagnostics")


@dataclass(frozen=True)
class ReportItem:
    """One figure or table of the report: its file stem, section and caption (formatted with the config)."""

    key: str
    kind: str  # "figure" or "table"
    section: str
    caption: str
    when: Callable[[StudyConfig], bool] | None = None  # in the report only for studies where this holds


def _several_levels(cfg: StudyConfig) -> bool:
    return len(cfg.data.shot_levels) > 1


REPORT_ITEMS: tuple[ReportItem, ...] = (
    ReportItem("classification", "table", "Main result",
               "Top-1 accuracy (%) on the {classify.evaluate_on} split, {data.max_shots} labelled images per class, "
               "{classify.backbone}, {classify.steps} optimizer steps for every method; {interval}. "
               "synthetic_per_source: the synthetic images each labelled image can be replaced by."),
    ReportItem("figure1_real_naive_mvc", "figure", "Main result",
               "Per class: real training images; the naive set (the backbone before MVC fine-tuning, prompted with "
               "the same mixed captions); MVC images generated from a real image of the class (Figure 1)."),
    ReportItem("few_shot_curve", "figure", "Few-shot curve",
               "Top-1 accuracy against labelled images per class (log scale), {data.shot_levels}: no augmentation, "
               "the best classical augmentation (the highest mean over the levels), the SDEdit and text-only "
               "fine-tuned baselines, and MVC; each level has its own fine-tuning and generation; bars: {interval}.",
               _several_levels),
    ReportItem("few_shot", "table", "Few-shot curve",
               "Top-1 accuracy (%) per labelled images per class and method; {interval}.", _several_levels),
    ReportItem("figure2_coarse_fine", "figure", "What the method generates",
               "A real image, then MVC images from coarse mixes (Dirichlet weights over {generate.mixing.k} captions "
               "of the class) and fine mixes (a step of at most {generate.mixing.beta_max} towards another caption) "
               "(Figure 2)."),
    ReportItem("figure3_training_pipeline", "figure", "What the method generates",
               "MVC fine-tuning as this study ran it (Figure 3)."),
    ReportItem("figure4_generation_pipeline", "figure", "What the method generates",
               "Generation with MVC as this study ran it (Figure 4)."),
    ReportItem("figure5_real_mvc_naive", "figure", "What the method generates",
               "Real images (top row), {generate.images_per_source} MVC images generated from each, and the naive "
               "set's image for the same prompt (bottom row) (Figure 5)."),
    ReportItem("classification_bars", "figure", "Ablations and tests",
               "Top-1 accuracy per method at {data.max_shots} labelled images per class (MVC methods in orange); "
               "bars: {interval}."),
    ReportItem("paired_tests", "table", "Ablations and tests",
               "MVC minus each baseline (top-1 points) at each shots level, paired over classifier seeds, with a "
               "t-test and Holm's correction over the baselines of a level; the comparator fixed in advance is "
               "{report.comparator} (comparator = True). {paired_interval}"),
    ReportItem("ablation", "table", "Ablations and tests",
               "MVC under one change each (mixing mode, images per source M, p_synthetic), beside one- and two-phase "
               "MVC on the same seeds; mean and 95% interval over those seeds."),
    ReportItem("image_metrics", "table", "Image metrics",
               "Per synthetic set: Fréchet distance and KID to real {metrics.reference_split} images on "
               "{metrics.feature_extractor} features, label fidelity (accuracy of a classifier trained on real "
               "images of {metrics.judge_splits}, never the generation sources), diversity (mean pairwise feature "
               "distance within a class), and copies: the share of images whose nearest labelled training image is "
               "closer than a third of the second nearest (nn_distance_vs_real: their median nearest distance over "
               "a real training image's to its nearest other). FID, KID and diversity are computed on an equal, "
               "class-stratified, seeded sample of every set (images_per_class); fidelity and copies on all its "
               "images."),
    ReportItem("memorization_pairs", "figure", "Image metrics",
               "The MVC images closest to being copies: each generated image (top row) above its nearest labelled "
               "training image (bottom row), with the ratio of its nearest to its second-nearest training image "
               "(a copy is below 1/3; the table's `copies` column is the share of such images)."),
    ReportItem("samples", "figure", "Diagnostics", "Labelled training images, a row per class."),
    ReportItem("class_histogram", "figure", "Diagnostics", "Images per class and split."),
    ReportItem("caption_embeddings_pca", "figure", "Diagnostics",
               "Caption embeddings (first two principal components) by class, with coarse and fine mixes drawn "
               "among them: mixes stay inside their class."),
    ReportItem("backbone_loss_vae", "figure", "Diagnostics",
               "Surrogate pretraining, VAE: reconstruction loss (MSE, plus a KL term of weight "
               "{backbone.surrogate.vae_kl_weight}) per step."),
    ReportItem("backbone_loss_unet", "figure", "Diagnostics",
               "Surrogate pretraining, UNet: diffusion loss (MSE of the predicted noise) per step."),
    ReportItem("finetune_loss", "figure", "Diagnostics", "MVC fine-tuning: diffusion loss per step."),
    ReportItem("finetune_samples", "figure", "Diagnostics",
               "At each kept fine-tuning checkpoint: a conditioning image, then images generated from it "
               "(drawn by notebook 03)."),
)


def numbered_items(cfg: StudyConfig) -> list[tuple[ReportItem, str, str]]:
    """(item, "Figure n" / "Table n", caption) in report order, for the items this study has."""
    counts = {"figure": 0, "table": 0}
    out = []
    for item in REPORT_ITEMS:
        if item.when is not None and not item.when(cfg):
            continue
        counts[item.kind] += 1
        out.append((item, f"{item.kind.title()} {counts[item.kind]}", _format(item.caption, cfg)))
    return out


def interval_sentence(cfg: StudyConfig) -> str:
    """What a reported interval covers, for captions."""
    c = cfg.classify
    if cfg.replicates == 1:
        return (f"mean and 95% t-interval over the classifier seeds {c.seeds} (the generative pipeline is one run: "
                f"the interval covers classifier seeds only)")
    return (f"mean over the classifier seeds {c.seeds}, and a 95% t-interval over the means of the "
            f"{cfg.replicates} replicates of the generative pipeline (replicate r fine-tunes and generates with its "
            f"own seeds; classifier seed number i is paired with replicate i mod {cfg.replicates}), so the interval "
            f"covers the variance of fine-tuning, generation and classifier training")


def paired_interval_sentence(cfg: StudyConfig) -> str:
    if cfg.replicates == 1:
        return "The interval and test cover classifier seeds only."
    return (f"The differences are averaged within each of the {cfg.replicates} replicates; the interval and the "
            f"t-test are over those replicate means ({cfg.replicates - 1} degrees of freedom).")


_SENTENCES = {"interval": interval_sentence, "paired_interval": paired_interval_sentence}


def _format(template: str, cfg: StudyConfig) -> str:
    """Fill `{section.field}` placeholders with the study's values (and `{interval}`: what intervals cover)."""
    out, rest = "", template
    while "{" in rest:
        before, _, after = rest.partition("{")
        field, _, rest = after.partition("}")
        if field in _SENTENCES:
            out += before + _SENTENCES[field](cfg)
            continue
        node = cfg
        for part in field.split("."):
            node = getattr(node, part)
        out += before + str(node)
    return out + rest


# ----------------------------------------------------------------------------------------------------------
# Tables


def write_table(frame: pd.DataFrame, folder: Path, name: str, caption: str = "") -> dict[str, Path]:
    """`name.csv`, `name.md` and `name.tex` (booktabs) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / f"{name}.csv", "md": folder / f"{name}.md", "tex": folder / f"{name}.tex"}
    write_text(out["csv"], frame.to_csv(index=False))
    write_text(out["md"], (f"{caption}\n\n" if caption else "") + frame.to_markdown(index=False) + "\n")
    latex = frame.style.hide(axis="index").format(precision=2).to_latex(hrules=True, caption=caption or None)
    write_text(out["tex"], latex)
    return out


def make_tables(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """Every table of the report, written as CSV, Markdown and LaTeX."""
    results = load_results(cfg)
    top = shots_label(cfg.data.max_shots)
    tests = [paired_tests(results, m, cfg.report.comparator, shots=shots_label(level)).pipe(
        lambda t, lv=level: t.assign(shots=shots_label(lv)) if len(t) else t)
        for level in reversed(cfg.data.shot_levels) for m in ("mvc", "mvc_two_phase") if m in set(results["method"])]
    tests = pd.concat(tests or [pd.DataFrame()])
    if len(tests):
        tests = tests[["shots"] + [c for c in tests.columns if c != "shots"]]
    tables = {"classification": accuracy_table(results, shots=top), "ablation": ablation_table(results),
              "paired_tests": tests, "image_metrics": load_image_metrics(cfg).round(4)}
    if _several_levels(cfg):
        tables["few_shot"] = shots_table(results)
    captions = {item.key: f"{label}: {caption}" for item, label, caption in numbered_items(cfg) if item.kind == "table"}
    for name, frame in tables.items():
        write_table(frame, cfg.paths.tables, name, captions[name])
    return tables


def shot_curve(table: pd.DataFrame) -> plt.Figure:
    """Accuracy against labelled images per class (log scale) with intervals: none, the best classical baseline,
    sd_img2img, sd_finetuned and MVC (those the study ran)."""
    classical = [m for m in ("autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix") if m in set(table["method"])]
    best = max(classical, key=lambda m: table.loc[table["method"] == m, "top1"].mean()) if classical else None
    shown = [m for m in ("none", best, "sd_img2img", "sd_finetuned", "mvc") if m and m in set(table["method"])]
    colors = {"none": "#7f7f7f", best: "#3d85c6", "sd_img2img": "#6aa84f", "sd_finetuned": "#8e63ce", "mvc": "#e69138"}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, method in enumerate(shown):
        r = table[table["method"] == method]
        x = r["shots"].astype(int) * 1.04 ** (i - (len(shown) - 1) / 2)  # side by side, so the bars stay apart
        ax.errorbar(x, r["top1"], yerr=r["ci95"], marker="o", capsize=3, color=colors[method],
                    label=f"{method} (best classical)" if method == best else method,
                    linewidth=2.2 if method == "mvc" else 1.2)
    ax.set_xscale("log")
    levels = sorted(table["shots"].astype(int).unique())
    ax.set_xticks(levels, [str(v) for v in levels])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_bars(table: pd.DataFrame) -> plt.Figure:
    """Top-1 per method with its interval; MVC methods in orange."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ["#e69138" if m in MVC_METHODS else "#6fa8dc" for m in table["method"]]
    ax.bar(table["method"], table["top1"], yerr=table["ci95"], color=colors, capsize=3)
    lo = max(0.0, float((table["top1"] - table["ci95"]).min()) - 5)
    ax.set_ylim(lo, min(100.0, float((table["top1"] + table["ci95"]).max()) + 2))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# Figures


def _paper_figures(cfg: StudyConfig) -> dict[str, Callable[[], plt.Figure]]:
    """Figures 1-5, drawn from only the images they show (a few per class, what one source per class made)."""
    splits = load_splits(cfg)
    train = splits[splits["split"] == "train"]
    shown = train[train["label"].isin(sorted(train["label"].unique())[: cfg.report.classes_in_figures])]
    sources = shown.groupby("label")["image_id"].first().tolist()
    real_ids = shown.groupby("label").head(3)["image_id"].to_numpy()
    real = dict(zip(real_ids, tensor_to_images(diffusion_images(cfg, real_ids))))
    synthetic = {n: load_synthetic(cfg, n, cfg.backbone.resolution, sources) for n in synthetic_set_names(cfg.generate)}
    return {
        "figure1_real_naive_mvc": lambda: figures.figure1(cfg, real, splits, synthetic),
        "figure2_coarse_fine": lambda: figures.figure2(cfg, real, sources[:3], synthetic),
        "figure3_training_pipeline": lambda: figures.pipeline_diagram(cfg, "training"),
        "figure4_generation_pipeline": lambda: figures.pipeline_diagram(cfg, "generation"),
        "figure5_real_mvc_naive": lambda: figures.figure5(cfg, real, sources, synthetic),
        "memorization_pairs": lambda: memorization_figure(cfg),
    }


def memorization_figure(cfg: StudyConfig, n: int = 8) -> plt.Figure:
    """The `n` images of the first MVC set nearest to a copy, above their nearest labelled training image."""
    splits, images = load_splits(cfg), load_images(cfg)
    train = to_chw(images[splits[splits["split"] == "train"]["image_id"].to_numpy()])
    name = synthetic_set_names(cfg.generate)[0]
    imgs, _ = load_synthetic(cfg, name)
    d1, d2, nearest = nearest_two(to_chw(imgs), train)
    order = torch.argsort(d1 / d2.clamp_min(1e-8))[:n]
    top = [imgs[i] for i in order.tolist()]
    bottom = [train[j].permute(1, 2, 0).numpy() for j in nearest[order].tolist()]
    titles = [f"{float(d1[i] / d2[i]):.2f}" for i in order.tolist()]
    return figures.image_grid([(name, top), ("nearest real", bottom)], titles)


def diagnostic_figures(cfg: StudyConfig) -> dict[str, Callable[[], plt.Figure]]:
    """The diagnostics that come from the work files alone (no sampling)."""
    splits = load_splits(cfg)
    out = {
        "samples": lambda: sample_grid(load_images(cfg), splits, per_class=cfg.report.examples_per_class * 2,
                                       max_classes=cfg.report.classes_in_figures),
        "class_histogram": lambda: class_histogram(splits),
        "caption_embeddings_pca": lambda: caption_map(cfg),
        "finetune_loss": lambda: figures.loss_curve(load_loss(cfg), "diffusion loss", "MVC fine-tuning"),
    }
    backbone_loss = load_backbone_loss(cfg)
    if backbone_loss is not None:
        for part, ylabel in (("vae", "reconstruction loss (MSE + KL)"), ("unet", "diffusion loss")):
            group = backbone_loss[backbone_loss["part"] == part].reset_index(drop=True)
            out[f"backbone_loss_{part}"] = (lambda g=group, y=ylabel, p=part:
                                            figures.loss_curve(g, y, f"surrogate pretraining: {p.upper()}"))
    return out


def caption_map(cfg: StudyConfig) -> plt.Figure:
    """Caption embeddings (PCA) with one coarse and one fine mix per caption drawn among them."""
    emb = load_caption_embeddings(cfg)
    anchors = np.arange(len(emb.labels))
    m = cfg.generate.mixing
    mixes = {mode: (mix(emb.embeddings, emb.labels, anchors, mode, m.k, m.alpha, m.beta_max, seed=cfg.seed).numpy(),
                    emb.labels) for mode in ("coarse", "fine")}
    return figures.embedding_map(emb.embeddings.numpy(), emb.labels, class_names(load_splits(cfg)), mixes)


def make_figures(cfg: StudyConfig, which: str = "all") -> dict[str, Path]:
    """Draw and save (PNG and PDF under `reports/<study>/figures/`) the paper's figures (`paper`), the
    diagnostics (`diagnostics`) or both (`all`)."""
    builders = {}
    if which in ("paper", "all"):
        builders.update(_paper_figures(cfg))
    if which in ("diagnostics", "all"):
        builders.update(diagnostic_figures(cfg))
    out = {}
    for name, build in builders.items():
        fig = build()
        out[name] = save(fig, cfg.paths.figures / f"{name}.png")
        plt.close(fig)
    return out


def example_batch_figure(cfg: StudyConfig, batch: pd.DataFrame) -> plt.Figure:
    """The target and conditioning images of an example fine-tuning batch (notebook 03), dropped ones marked."""
    images = load_images(cfg)
    targets = [images[i] for i in batch["target_image_id"]]
    conds = [images[i] for i in batch["condition_image_id"]]
    titles = [("no text" if t else "") + (" no image" if i else "") for t, i in zip(batch["text_dropped"],
                                                                                    batch["image_dropped"])]
    return figures.image_grid([("target x", targets), ("condition x_c", conds)], [t.strip() for t in titles])


def summary(cfg: StudyConfig, notebook: str) -> pd.DataFrame:
    """The numbers a notebook ends with (what it made, how long it took), from the stage records."""
    rows = []
    for name in notebook_stages(notebook):
        info = stage_info(cfg, name)
        for key, value in info.items():
            if key in ("stage", "hash", "finished", "outputs"):
                continue
            rows.append({"stage": name, "quantity": key, "value": json.dumps(value) if isinstance(value, dict) else value})
    return pd.DataFrame(rows, columns=["stage", "quantity", "value"])


# ----------------------------------------------------------------------------------------------------------
# index.html


def render_notebooks(cfg: StudyConfig) -> list[Path]:
    """Executed notebooks as standalone HTML beside them."""
    from nbconvert import HTMLExporter  # deferred: nbconvert is slow to import and only the report needs it

    out = []
    exporter = HTMLExporter()
    for nb in sorted(cfg.paths.executed_notebooks.glob("[0-9]*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        target = nb.with_suffix(".html")
        write_text(target, body)
        out.append(target)
    return out


def _figure_html(path: Path, label: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
            f"<figcaption><b>{label}.</b> {html.escape(caption)}</figcaption></figure>")


def _table_html(path: Path, label: str, caption: str) -> str:
    body = pd.read_csv(path).to_html(index=False, border=0, na_rep="")
    return f"<div class=table><p class=caption><b>{label}.</b> {html.escape(caption)}</p>{body}</div>"


def _backbone_sentence(cfg: StudyConfig) -> str:
    """What the backbone knew before MVC fine-tuning, which is what the naive set shows."""
    if cfg.backbone.kind == "pretrained":
        return f"The backbone is the pretrained {cfg.backbone.model}."
    domain = cfg.backbone.surrogate.source_domain
    if domain == "none":
        return ("The surrogate backbone was pretrained on the unlabelled pool only, with no labelled source domain: "
                "it never saw a class name, so the naive set shows a backbone that does not know the classes.")
    return (f"The surrogate backbone was pretrained on the unlabelled pool (class-free captions) and on a labelled "
            f"source domain, {domain}, captioned with the class prompt: it knows the classes, in another domain.")


def write_index(cfg: StudyConfig) -> Path:
    """`reports/<study>/index.html`: the report in the registry's order, then notebooks, params, provenance."""
    paths = cfg.paths
    notebooks = render_notebooks(cfg)
    body = {section: [] for section in SECTIONS}
    for item, label, caption in numbered_items(cfg):
        path = (paths.tables / f"{item.key}.csv") if item.kind == "table" else (paths.figures / f"{item.key}.png")
        if path.exists():
            body[item.section].append((_table_html if item.kind == "table" else _figure_html)(path, label, caption))
    sections = "".join(f"<h2>{html.escape(s)}</h2>" + "".join(parts) for s, parts in body.items() if parts)
    prov = json.loads(paths.provenance.read_text()) if paths.provenance.exists() else {}
    links = "".join(f'<li><a href="notebooks/{p.name}">{p.stem}</a></li>' for p in notebooks)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MVC study: {html.escape(cfg.study)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}}
table{{border-collapse:collapse;margin:0.3em 0 1.2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{margin:0.5em 0 1.5em}}img{{max-width:100%}}figcaption,.caption{{font-size:0.9em;color:#333;max-width:900px}}
pre{{background:#f6f6f6;padding:0.5em;overflow:auto;font-size:12px}}</style>
</head><body>
<h1>Mixing Visual Concepts: study <code>{html.escape(cfg.study)}</code></h1>
<p>Reproduction of Rahat and Venkateswara, <i>Dataset Augmentation by Mixing Visual Concepts</i> (WACV 2025),
with the MVC study kit. Dataset <code>{cfg.data.dataset}</code>, backbone <code>{cfg.backbone.kind}</code>
(<code>{html.escape(cfg.backbone.model if cfg.backbone.kind == "pretrained" else "surrogate")}</code>), classifier
<code>{cfg.classify.backbone}</code>. {html.escape(_backbone_sentence(cfg))} Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>
{sections}
<h2>Executed notebooks</h2><ul>{links}</ul>
<h2>Resolved params</h2><pre>{html.escape(config_to_yaml(cfg))}</pre>
<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}</pre>
<script>/* the page reports how many of its images decoded (checked by the tests in headless Chromium) */
window.addEventListener("load", () => {{ const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length; }});</script>
</body></html>
"""
    write_text(paths.index, page)
    return paths.index


@stage("report")
def build_report(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Figures, tables and index.html for one study."""
    tables = make_tables(cfg)
    fig = accuracy_bars(tables["classification"])
    save(fig, cfg.paths.figures / "classification_bars.png")
    plt.close(fig)
    if "few_shot" in tables:
        fig = shot_curve(tables["few_shot"])
        save(fig, cfg.paths.figures / "few_shot_curve.png")
        plt.close(fig)
    made = make_figures(cfg)
    write_index(cfg)
    return {"figures": len(made) + 1, "tables": len(tables)}


def report_all(reports_root: Path | None = None) -> str:
    """`mvc report --all`: the classification table across every study under `reports/`, as Markdown."""
    root = reports_root or REPO_ROOT / "reports"
    frames = []
    for table in sorted(root.glob("*/tables/classification.csv")):
        t = pd.read_csv(table)
        t["study"] = table.parent.parent.name
        frames.append(t)
    if not frames:
        raise FileNotFoundError(f"no study has a classification table under {root}/*/tables/; run `mvc study PARAMS` first")
    allt = pd.concat(frames)
    allt["cell"] = allt["top1"].map("{:.2f}".format) + " ± " + allt["ci95"].map("{:.2f}".format)
    wide = allt.pivot_table(index="method", columns="study", values="cell", aggfunc="first")
    wide = wide.reindex([m for m in METHOD_ORDER if m in wide.index]).reset_index()
    write_table(wide, root / "_all" / "tables", "classification_all_studies",
                "Top-1 accuracy (%), mean ± 95% CI over seeds, per study")
    return wide.to_markdown(index=False)
