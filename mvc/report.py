"""Stage `report`: the paper's figures and tables for one study and `reports/<study>/index.html`, which reads
like a results section: the headline (main accuracy table and Figure 1), the method's figures, ablations and
tests, image metrics, then diagnostics.

`REPORT_ITEMS` is the one list of what the report holds: each item's key (its file stem), kind, section, caption
and the function that builds it from the study's outputs (figures in `mvc.figures`, tables in `mvc.statistics`).
A builder returns None for what a study does not have (no ablation grid, one shots level), and the item is left
out; numbering follows what is present. The page is `templates/report.html.j2`; the folders `figures/` and
`tables/` are written whole on every run, so nothing stale stays beside the new files.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from mvc import figures
from mvc.artifacts import (
    diffusion_images,
    load_backbone_loss,
    load_image_metrics,
    load_images,
    load_loss,
    load_results,
    load_splits,
    load_synthetic,
    report_index,
    synthetic_set_names,
)
from mvc.config import StudyConfig, config_to_yaml
from mvc.grid import grid, run_key
from mvc.imaging import tensor_to_images
from mvc.io import write_text
from mvc.paths import REPO_ROOT
from mvc.registry import METHODS, method_sets, report_order
from mvc.stages import notebook_stages
from mvc.state import stage, stage_info
from mvc.statistics import ablation_table, accuracy_table, paired_tests, shots_table
from mvc.units import Unit

SECTIONS = ("Main result", "How the recipe was chosen", "Few-shot curve", "What the method generates",
            "Ablations and tests", "Image metrics",
            "Diagnostics")
TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"


class ReportInputs:
    """What the builders read, each loaded from the study's outputs once, when first asked for."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg

    @cached_property
    def results(self) -> pd.DataFrame:
        """The classifier runs of the study's current grid: a run kept from another top level (its ablations, a
        method since left out of `curve_methods`) is not read."""
        rows = load_results(self.cfg)
        keys = {run_key(spec) for spec in grid(self.cfg)}
        keep = [(Unit(s if pd.notna(s) else None).label, v, m, int(sd)) in keys
                for s, v, m, sd in zip(rows["shots"], rows["variant"], rows["method"], rows["seed"])]
        return rows[keep].reset_index(drop=True)

    @cached_property
    def classification(self) -> pd.DataFrame:
        return accuracy_table(self.results, shots=self.cfg.data.max_shots)

    @cached_property
    def few_shot(self) -> pd.DataFrame | None:
        return shots_table(self.results) if len(self.cfg.data.shot_levels) > 1 else None

    @cached_property
    def paired(self) -> pd.DataFrame | None:
        """Each paired MVC method (`Method.paired`) minus every baseline, at every shots level."""
        ran = set(self.results["method"])
        tests = [paired_tests(self.results, m, self.cfg.report.comparator, shots=level).assign(shots=level)
                 for level in reversed(self.cfg.data.shot_levels) for m in report_order(ran) if METHODS.get(m)
                 and METHODS[m].paired]
        tests = [t for t in tests if "baseline" in t]
        if not tests:
            return None
        out = pd.concat(tests)
        return out[["shots"] + [c for c in out.columns if c != "shots"]].reset_index(drop=True)

    @cached_property
    def unit_metrics(self) -> pd.DataFrame:
        return load_image_metrics(self.cfg, all_units=True)

    @cached_property
    def levels(self) -> pd.DataFrame:
        """Per shots level: how far mixing and other-image conditioning can act there (`metrics.effective_design`)."""
        return level_design(self.unit_metrics, self.cfg.finetune.cond_image)

    @cached_property
    def few_shot_marked(self) -> pd.DataFrame | None:
        """The few-shot table with, per level, what mixing and conditioning can do there."""
        if self.few_shot is None:
            return None
        marks = self.levels.set_index("shots")["what the level can show"]
        return self.few_shot.assign(level=[marks.get(Unit(s).label, "") for s in self.few_shot["shots"]])

    @cached_property
    def splits(self) -> pd.DataFrame:
        return load_splits(self.cfg)

    @cached_property
    def shown(self) -> tuple[list[int], dict, dict]:
        """Figures 1, 2 and 5 draw from only the images they show: one source per shown class, a few real images
        per class, and what each synthetic set made from those sources."""
        cfg, train = self.cfg, self.splits[self.splits["split"] == "train"]
        shown = train[train["label"].isin(sorted(train["label"].unique())[: cfg.report.classes_in_figures])]
        sources = shown.groupby("label")["image_id"].first().tolist()
        real_ids = shown.groupby("label").head(3)["image_id"].to_numpy()
        real = dict(zip(real_ids, tensor_to_images(diffusion_images(cfg, real_ids))))
        synthetic = {n: load_synthetic(cfg, n, cfg.backbone.resolution, sources)
                     for n in synthetic_set_names(cfg.generate)}
        return sources, real, synthetic


def level_design(unit_metrics: pd.DataFrame, cond_image: str) -> pd.DataFrame:
    """Per shots level (over its replicates): labelled images per class, distinct captions per class, the share of
    classes with two or more, other labelled images per class, and in words what the level can show: mixing needs
    two distinct captions in a class, other-image conditioning a partner other than the target (with one other
    image the partner is fixed)."""
    real = unit_metrics[unit_metrics["synthetic_set"] == "real_train"]
    rows = []
    for shots, group in real.groupby("shots", sort=False):
        mixable, partners = float(group["mixable_classes"].min()), int(group["partners_per_class"].min())
        mixing = ("cannot act (one caption per class)" if mixable == 0 else
                  "acts" if mixable == 1 else f"acts in {mixable:.0%} of classes")
        conditioning = ("the target itself (finetune.cond_image: same)" if cond_image == "same" else
                        "cannot act (the target is its own partner)" if partners == 0 else
                        "one fixed partner" if partners == 1 else f"{partners} partners or more")
        can = mixable > 0 and (partners >= 2 or cond_image == "same")
        rows.append({"shots": shots, "labelled_min": partners + 1,
                     "captions_per_class": round(float(group["captions_per_class"].mean()), 2),
                     "distinct_caption_share": round(float(group["distinct_caption_share"].min()), 3)
                     if "distinct_caption_share" in group else float("nan"),
                     "mixable_classes": mixable, "mixing": mixing, "other_image_conditioning": conditioning,
                     "what the level can show": "mixing and conditioning" if can else
                     "no conclusion about mixing or conditioning" if mixable == 0 else
                     "mixing only (no conclusion about conditioning)"})
    out = pd.DataFrame(rows)
    return out.sort_values("labelled_min").reset_index(drop=True) if len(out) else out


def metrics_by_level(unit_metrics: pd.DataFrame) -> pd.DataFrame | None:
    """Fidelity, copies (of the labelled images, the pool, the source domain) and distances of every set at every
    shots level: the mean over its replicates, and how many replicates were measured."""
    if unit_metrics["shots"].nunique() < 2 and unit_metrics["replicate"].nunique() < 2:
        return None
    cols = ["label_fidelity", "copies", "copies_pool", "copies_source", "nn_distance_vs_real", "fid", "diversity"]
    table = unit_metrics.groupby(["shots", "synthetic_set"], sort=False)[cols].mean().round(4)
    table["replicates"] = unit_metrics.groupby(["shots", "synthetic_set"], sort=False)["replicate"].nunique()
    return table.reset_index()


def _backbone_loss(part: str, ylabel: str) -> Callable[[ReportInputs], plt.Figure | None]:
    def build(d: ReportInputs) -> plt.Figure | None:
        loss = load_backbone_loss(d.cfg)  # None for a pretrained backbone
        if loss is None:
            return None
        group = loss[loss["part"] == part].reset_index(drop=True)
        return figures.loss_curve(group, ylabel, f"surrogate pretraining: {part.upper()}")
    return build


def _finetune_previews(d: ReportInputs) -> Path | None:
    path = d.cfg.paths.finetune_previews  # drawn by the generate stage
    return path if path.exists() else None


def design_warnings(cfg: StudyConfig, metrics: pd.DataFrame) -> list[str]:
    """Sentences for the headline on what the design lets the generator show: synthetic images drawn below the
    resolution the classifier reads (upsampled), and captions that barely tell a class's images apart (under half of
    them distinct: mixing has little to mix)."""
    out = []
    if cfg.generation_upsampled:
        out.append(f"The synthetic images were drawn at {cfg.backbone.resolution} px (backbone.resolution) and "
                   f"upsampled to the {cfg.data.resolution} px the classifier and the judge read (data.resolution): "
                   f"they carry less detail than the real images; set backbone.resolution to {cfg.data.resolution} "
                   f"to draw them at the classifier's resolution.")
    real = metrics[metrics["synthetic_set"] == "real_train"]
    if len(real) and "distinct_caption_share" in real and float(real["distinct_caption_share"].min()) < 0.5:
        share = float(real["distinct_caption_share"].min())
        out.append(f"Only {share:.0%} of a class's labelled images have a caption of their own "
                   f"({cfg.caption.backend} captioner; the rest share theirs with another image of the class): mixing "
                   f"has little to mix here, so the mixing results (coarse, fine, no-mix) say little about the "
                   f"method.")
    return out


def headline_warnings(cfg: StudyConfig) -> list[str]:
    """Every sentence of the report's headline that warns the reader: the design's and the label fidelity's."""
    metrics = load_image_metrics(cfg)
    return design_warnings(cfg, metrics) + fidelity_warnings(cfg, metrics)


def fidelity_warnings(cfg: StudyConfig, metrics: pd.DataFrame) -> list[str]:
    """A sentence for each synthetic set whose label fidelity is more than `report.fidelity_gap` below the judge's
    accuracy on real images (the main unit's measures): its images mostly do not carry their class."""
    out = []
    judge = float(metrics["judge_accuracy_on_real"].iloc[0]) if len(metrics) else 1.0
    if judge < cfg.report.judge_floor:
        return [f"The judge ({cfg.metrics.judge_backbone}, trained on real {' and '.join(cfg.metrics.judge_splits)} "
                f"images) reads only {judge:.0%} of real {cfg.metrics.judge_scored_on} images, below "
                f"report.judge_floor ({cfg.report.judge_floor:.0%}): label fidelity, the filter of mvc_filtered and "
                f"the recipe chosen on fidelity mean little on this data; set metrics.judge_backbone: "
                f"efficientnet_lite0 (a pretrained network) or give the judge more images."]
    selected = (cfg.paths.report / "selection" / "selection.csv").exists()
    hint = "even with the recipe `mvc select` chose on val" if selected else "or choose the recipe with `mvc select`"
    for row in metrics[metrics["synthetic_set"] != "real_train"].itertuples():
        if row.label_fidelity < row.judge_accuracy_on_real - cfg.report.fidelity_gap:
            users = [m for m in cfg.classify.methods if row.synthetic_set in method_sets(m, cfg.classify)]
            out.append(f"The {row.synthetic_set} images carry their intended class {row.label_fidelity:.0%} of the "
                       f"time, against {row.judge_accuracy_on_real:.0%} for real {cfg.metrics.judge_scored_on} "
                       f"images read by the same judge: most of them are of another class or of none, so the "
                       f"classifiers that train on them ({', '.join(users) or 'none in this study'}) learn partly "
                       f"from mislabelled images; read their rows with that in mind ({hint}; `mvc_filtered` keeps "
                       f"only the images the judge labels as intended).")
    return out


def _selection_log(cfg: StudyConfig) -> pd.DataFrame | None:
    path = cfg.paths.report / "selection" / "selection.csv"
    return pd.read_csv(path) if path.exists() else None


def _nonempty(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    return frame if frame is not None and len(frame) else None


@dataclass(frozen=True)
class ReportItem:
    """One figure or table of the report: its file stem, section, caption (formatted with the config) and the
    function that builds it (a Figure, a table, the path of a PNG a stage drew, or None: not in this study)."""

    key: str
    kind: str  # "figure" or "table"
    section: str
    caption: str
    build: Callable[[ReportInputs], Any]


REPORT_ITEMS: tuple[ReportItem, ...] = (
    ReportItem("classification", "table", "Main result",
               "Top-1 accuracy (%) on the {classify.evaluate_on} split, {data.max_shots} labelled images per class, "
               "{classify.backbone}, {classify.steps} optimizer steps for every method; {interval}. "
               "synthetic_per_source: the synthetic images each labelled image can be replaced by.",
               lambda d: d.classification),
    ReportItem("figure1_real_naive_mvc", "figure", "Main result",
               "Per class: real training images; the sd_naive set (the backbone before MVC fine-tuning, prompted "
               "with the same mixed captions); MVC images generated from a real image of the class (Figure 1).",
               lambda d: figures.figure1(d.cfg, d.shown[1], d.splits, d.shown[2])),
    ReportItem("few_shot_curve", "figure", "Few-shot curve",
               "Top-1 accuracy against labelled images per class (log scale), {data.shot_levels}: the methods of "
               "the curve and the best classical augmentation (the highest mean over the levels); each level has "
               "its own fine-tuning and generation; bars: {interval}.",
               lambda d: figures.shot_curve(d.few_shot) if d.few_shot is not None else None),
    ReportItem("few_shot", "table", "Few-shot curve",
               "Top-1 accuracy (%) per labelled images per class and method; {interval}. `level`: what the level can "
               "show (table levels); a level where mixing or other-image conditioning cannot act says nothing about "
               "them.", lambda d: d.few_shot_marked),
    ReportItem("levels", "table", "Few-shot curve",
               "What mixing and other-image conditioning can do at each level (fine-tuning conditions on "
               "{finetune.cond_image} image of the class): distinct captions among a class's labelled images (a mix "
               "of one caption is that caption), the share of classes with two or more, and the other labelled "
               "images a target can be conditioned on (0: the target itself; 1: a fixed partner). Minimum over "
               "replicates.", lambda d: d.levels if len(d.cfg.data.shot_levels) > 1 else None),
    ReportItem("figure2_coarse_fine", "figure", "What the method generates",
               "A real image, then MVC images from coarse mixes (Dirichlet weights over {generate.mixing.k} captions "
               "of the class) and fine mixes (a step of at most {generate.mixing.beta_max} towards another caption) "
               "(Figure 2).",
               lambda d: figures.figure2(d.cfg, d.shown[1], d.shown[0][:3], d.shown[2])),
    ReportItem("figure3_training_pipeline", "figure", "What the method generates",
               "MVC fine-tuning as this study ran it (Figure 3).",
               lambda d: figures.pipeline_diagram(d.cfg, "training")),
    ReportItem("figure4_generation_pipeline", "figure", "What the method generates",
               "Generation with MVC as this study ran it (Figure 4).",
               lambda d: figures.pipeline_diagram(d.cfg, "generation")),
    ReportItem("figure5_real_mvc_naive", "figure", "What the method generates",
               "Real images (top row), {generate.images_per_source} MVC images generated from each, and the sd_naive "
               "set's image for the same prompt (bottom row) (Figure 5).",
               lambda d: figures.figure5(d.cfg, d.shown[1], d.shown[0], d.shown[2])),
    ReportItem("classification_bars", "figure", "Ablations and tests",
               "Top-1 accuracy per method at {data.max_shots} labelled images per class (MVC methods in orange); "
               "bars: {interval}.", lambda d: figures.accuracy_bars(d.classification)),
    ReportItem("paired_tests", "table", "Ablations and tests",
               "MVC minus each baseline (top-1 points) at each shots level, paired over classifier seeds, with a "
               "t-test and Holm's correction over the baselines of a level; the comparator fixed in advance is "
               "{report.comparator} (comparator = True). {paired_interval}", lambda d: d.paired),
    ReportItem("ablation", "table", "Ablations and tests",
               "MVC under one change each (mixing mode, images per source M, p_synthetic), beside one- and two-phase "
               "MVC on the same seeds; mean and 95% interval over those seeds.",
               lambda d: _nonempty(ablation_table(d.results))),
    ReportItem("image_metrics", "table", "Image metrics",
               "Per synthetic set: Fréchet distance and KID to real {metrics.reference_split} images on "
               "{metrics.feature_extractor} features, label fidelity (accuracy of a classifier trained on real "
               "images of {metrics.judge_splits}, never the generation sources), diversity (mean pairwise feature "
               "distance within a class), and copies: the share of images whose nearest labelled training image is "
               "closer than a third of the second nearest (nn_distance_vs_real: their median nearest distance over "
               "a real training image's to its nearest other). FID, KID and diversity are computed on an equal, "
               "class-stratified, seeded sample of every set (images_per_class); fidelity and copies on all its "
               "images; copies_pool and copies_source: the same test against the unlabelled pool and the labelled "
               "source domain the generator also learnt from (empty where the study has none). label_fidelity is "
               "also the share of a set that the judge filter (mvc_filtered) keeps. captions_per_class and "
               "distinct_caption_share: distinct captions among a class's labelled images, as a count and as a share "
               "of its images (under half: mixing has little to mix, and the headline says so). Main unit "
               "({data.max_shots} labelled images per class, replicate 0).",
               lambda d: load_image_metrics(d.cfg).drop(columns=["shots", "replicate"]).round(4)),
    ReportItem("image_metrics_by_level", "table", "Image metrics",
               "The image measures of every shots level, each the mean over the level's replicates (replicates: how "
               "many were measured); every unit has its own labelled images, fine-tuning and generation.",
               lambda d: metrics_by_level(d.unit_metrics)),
    ReportItem("memorization_pairs", "figure", "Image metrics",
               "The MVC images closest to being copies: each generated image (top row) above its nearest labelled "
               "training image (bottom row), with the ratio of its nearest to its second-nearest training image "
               "(a copy is below 1/3; the table's `copies` column is the share of such images).",
               lambda d: figures.memorization_figure(d.cfg)),
    ReportItem("selection", "table", "How the recipe was chosen",
               "`mvc select` on the validation split and the image measures only, before any test accuracy was seen: "
               "every trial, its measures, the chosen one and why (the rule: docs/method.md, section 7). Absent when "
               "the recipe was not chosen by `mvc select` for this study.", lambda d: _selection_log(d.cfg)),
    ReportItem("samples", "figure", "Diagnostics", "Labelled training images, a row per class.",
               lambda d: figures.sample_grid(load_images(d.cfg), d.splits,
                                             per_class=d.cfg.report.examples_per_class * 2,
                                             max_classes=d.cfg.report.classes_in_figures)),
    ReportItem("class_histogram", "figure", "Diagnostics", "Images per class and split.",
               lambda d: figures.class_histogram(d.splits)),
    ReportItem("caption_embeddings_pca", "figure", "Diagnostics",
               "Caption embeddings (first two principal components) by class, with coarse and fine mixes drawn "
               "among them: mixes stay inside their class.", lambda d: figures.caption_map(d.cfg)),
    ReportItem("backbone_loss_vae", "figure", "Diagnostics",
               "Surrogate pretraining, VAE: reconstruction loss (MSE, plus a KL term of weight "
               "{backbone.surrogate.vae_kl_weight}) per step.",
               _backbone_loss("vae", "reconstruction loss (MSE + KL)")),
    ReportItem("backbone_loss_unet", "figure", "Diagnostics",
               "Surrogate pretraining, UNet: diffusion loss (MSE of the predicted noise) per step.",
               _backbone_loss("unet", "diffusion loss")),
    ReportItem("finetune_loss", "figure", "Diagnostics", "MVC fine-tuning: diffusion loss per step.",
               lambda d: figures.loss_curve(load_loss(d.cfg), "diffusion loss", "MVC fine-tuning")),
    ReportItem("finetune_samples", "figure", "Diagnostics",
               "At each kept fine-tuning checkpoint and the final model: a conditioning image, then images generated "
               "from it with the first MVC mode and the study's guidance (drawn by the generate stage).",
               _finetune_previews),
)
ITEM = {item.key: item for item in REPORT_ITEMS}


def item_path(cfg: StudyConfig, item: ReportItem) -> Path:
    """Where an item's file lives: `tables/<key>.csv` or `figures/<key>.png`."""
    return (cfg.paths.tables / f"{item.key}.csv") if item.kind == "table" else (cfg.paths.figures / f"{item.key}.png")


def numbered_items(cfg: StudyConfig) -> list[tuple[ReportItem, str, str]]:
    """(item, "Figure n" / "Table n", caption) in report order, for the items the last report run wrote."""
    counts = {"figure": 0, "table": 0}
    out = []
    for item in REPORT_ITEMS:
        if not item_path(cfg, item).exists():
            continue
        counts[item.kind] += 1
        out.append((item, f"{item.kind.title()} {counts[item.kind]}", _format(item.caption, cfg)))
    return out


def draw(cfg: StudyConfig, keys: list[str]) -> dict[str, Any]:
    """The items `keys` built without saving (what the notebooks show: a table, or a Figure, a PNG a stage drew
    shown as one), those the study has."""
    inputs = ReportInputs(cfg)
    built = {key: ITEM[key].build(inputs) for key in keys}
    return {k: figures.png_figure(v) if isinstance(v, Path) else v for k, v in built.items() if v is not None}


def interval_sentence(cfg: StudyConfig) -> str:
    """What a reported interval covers, for captions."""
    c = cfg.classify
    if cfg.replicates == 1:
        return (f"mean and 95% t-interval over the classifier seeds {c.seeds} (the generative pipeline is one run: "
                f"the interval covers classifier seeds only)")
    return (f"mean over the classifier seeds {c.seeds}, and a 95% t-interval over the means of the "
            f"{cfg.replicates} replicates of the generative pipeline (replicate r fine-tunes and generates with its "
            f"own seeds; classifier seed number i is paired with replicate i mod {cfg.replicates}), so the interval "
            f"covers the variance of fine-tuning, generation and classifier training"
            + (". With 2 replicates the interval has one degree of freedom (t = 12.7): its half-widths are too wide "
               "to read as a precision; 3 or more replicates give intervals that can" if cfg.replicates == 2 else ""))


def paired_interval_sentence(cfg: StudyConfig) -> str:
    if cfg.replicates == 1:
        return "The interval and test cover classifier seeds only."
    return (f"The differences are averaged within each of the {cfg.replicates} replicates; the interval and the "
            f"t-test are over those replicate means ({cfg.replicates - 1} degrees of freedom"
            + ("; too few for a readable interval" if cfg.replicates == 2 else "") + ").")


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
# writing


def write_table(frame: pd.DataFrame, folder: Path, name: str, caption: str = "") -> dict[str, Path]:
    """`name.csv`, `name.md` and `name.tex` (booktabs) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / f"{name}.csv", "md": folder / f"{name}.md", "tex": folder / f"{name}.tex"}
    write_text(out["csv"], frame.to_csv(index=False))
    write_text(out["md"], (f"{caption}\n\n" if caption else "") + frame.to_markdown(index=False) + "\n")
    latex = frame.style.hide(axis="index").format(precision=2).to_latex(hrules=True, caption=caption or None)
    write_text(out["tex"], latex)
    return out


def write_items(cfg: StudyConfig) -> list[str]:
    """Build every item of `REPORT_ITEMS` the study has and write it (tables as CSV, Markdown and LaTeX with
    their numbered caption; figures as PNG and PDF), into emptied `figures/` and `tables/` folders."""
    for folder in (cfg.paths.figures, cfg.paths.tables):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    inputs, counts, written = ReportInputs(cfg), {"figure": 0, "table": 0}, []
    for item in REPORT_ITEMS:
        built = item.build(inputs)
        if built is None:
            continue
        counts[item.kind] += 1
        label = f"{item.kind.title()} {counts[item.kind]}"
        if item.kind == "table":
            write_table(built, cfg.paths.tables, item.key, f"{label}: {_format(item.caption, cfg)}")
        elif isinstance(built, Path):  # a PNG a stage drew
            shutil.copyfile(built, item_path(cfg, item))
        else:
            figures.save(built, item_path(cfg, item))
            plt.close(built)
        written.append(item.key)
    return written


def summary(cfg: StudyConfig, notebook: str) -> pd.DataFrame:
    """What a notebook's stages did, from their records: time, steps, final loss, device, counts (not the
    digests of their outputs, which are for the up-to-date check)."""
    rows = []
    for name in notebook_stages(notebook):
        info = stage_info(cfg, name)
        for key, value in info.items():
            if key in ("stage", "hash", "finished", "outputs", "checks"):
                continue
            rows.append({"stage": name, "quantity": key,
                         "value": json.dumps(value) if isinstance(value, dict) else value})
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
    """`reports/<study>/index.html` from `templates/report.html.j2`: the items in the registry's order, then the
    notebooks, the resolved params and the provenance."""
    paths = cfg.paths
    notebooks = render_notebooks(cfg)
    sections: dict[str, list[dict]] = {s: [] for s in SECTIONS}
    for item, label, caption in numbered_items(cfg):
        entry = {"key": item.key, "kind": item.kind, "label": label, "caption": caption}
        path = item_path(cfg, item)
        if item.kind == "table":
            entry["html"] = pd.read_csv(path).to_html(index=False, border=0, na_rep="")
        else:
            entry["png"] = base64.b64encode(path.read_bytes()).decode()
        sections[item.section].append(entry)
    prov = json.loads(paths.provenance.read_text()) if paths.provenance.exists() else {}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True)
    page = env.get_template(TEMPLATE.name).render(
        study=cfg.study, dataset=cfg.data.dataset, backbone_kind=cfg.backbone.kind,
        backbone_name=cfg.backbone.model if cfg.backbone.kind == "pretrained" else "surrogate",
        classifier=cfg.classify.backbone, backbone_sentence=_backbone_sentence(cfg),
        generated=time.strftime("%Y-%m-%d %H:%M"), sections=[(s, e) for s, e in sections.items() if e],
        warnings=headline_warnings(cfg),
        notebooks=notebooks, params=config_to_yaml(cfg), provenance=json.dumps(prov, indent=2))
    write_text(paths.index, page)
    return paths.index


@stage("report", reader=report_index)
def build_report(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Figures, tables and index.html for one study."""
    written = write_items(cfg)
    write_index(cfg)
    return {"figures": sum(ITEM[k].kind == "figure" for k in written),
            "tables": sum(ITEM[k].kind == "table" for k in written),
            "warnings": headline_warnings(cfg)}


def _largest_level(study_report: Path) -> str:
    """The shots level a study's main table is at, from its provenance ("?" when it has none)."""
    prov = study_report / "provenance.json"
    if not prov.exists():
        return "?"
    shots = json.loads(prov.read_text()).get("params", {}).get("data", {}).get("shots")
    return Unit(max(shots) if isinstance(shots, list) else shots).label


def report_all(reports_root: Path | None = None) -> str:
    """`mvc report --all`: the classification table of every study under `reports_root`, a column per study named
    with the shots level its table is at ("not run" where a study lacks a method), and the few-shot curves of the
    studies that have one, a row per study, level and method; as Markdown, and under `<root>/_all/tables/`."""
    root = reports_root or REPO_ROOT / "reports"
    frames, curves = [], []
    for table in sorted(root.glob("*/tables/classification.csv")):
        study = table.parent.parent
        if study.name.startswith("_"):
            continue
        t = pd.read_csv(table)
        t["study"] = f"{study.name} ({_largest_level(study)} shots)"
        frames.append(t)
        if (table.parent / "few_shot.csv").exists():
            curves.append(pd.read_csv(table.parent / "few_shot.csv").assign(study=study.name))
    if not frames:
        raise FileNotFoundError(f"no study has a classification table under {root}/*/tables/; "
                                "run `mvc study PARAMS` first")
    allt = pd.concat(frames)
    allt["cell"] = allt["top1"].map("{:.2f}".format) + " ± " + allt["ci95"].map("{:.2f}".format)
    wide = allt.pivot_table(index="method", columns="study", values="cell", aggfunc="first").fillna("not run")
    wide = wide.reindex(report_order(wide.index)).reset_index()
    write_table(wide, root / "_all" / "tables", "classification_all_studies",
                "Top-1 accuracy (%), mean ± 95% interval as each study's Table 1 gives it, at the shots level in each "
                "column's name; not run: a method the study did not run")
    text = wide.to_markdown(index=False)
    if curves:
        few = pd.concat(curves)
        few["cell"] = few["top1"].map("{:.2f}".format) + " ± " + few["ci95"].map("{:.2f}".format)
        few = few.pivot_table(index=["study", "shots"], columns="method", values="cell", aggfunc="first")
        few = few[report_order(few.columns)].fillna("not run").reset_index()
        write_table(few, root / "_all" / "tables", "few_shot_all_studies",
                    "Top-1 accuracy (%) per study and shots level (the studies with a few-shot curve)")
        text += "\n\n" + few.to_markdown(index=False)
    return text
