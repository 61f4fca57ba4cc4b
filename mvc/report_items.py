"""What the report holds, in one list: `REPORT_ITEMS`, each item's key (its file stem), kind, section, caption and
the function that builds it from the study's outputs (figures in `mvc.figures`, tables in `mvc.statistics`). A
builder returns None for what a study does not have (no ablation grid, one shots level), and the item is left out;
numbering follows what is present. `draw` builds items without saving them, for the notebooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

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
    synthetic_set_names,
)
from mvc.config import StudyConfig
from mvc.grid import grid, run_key
from mvc.imaging import tensor_to_images
from mvc.registry import METHODS, report_order
from mvc.report_text import format_caption
from mvc.statistics import (
    ablation_table,
    accuracy_table,
    oracle_tests,
    paired_tests,
    primary_contrast,
    shots_table,
)
from mvc.units import Unit

SECTIONS = ("Main result", "How the recipe was chosen", "Few-shot curve", "What the method generates",
            "Ablations and tests", "Image metrics",
            "Diagnostics")


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
    def primary(self) -> pd.DataFrame:
        """The contrast declared before the run (`report.comparator` at `report.primary_shots`)."""
        r = self.cfg.report
        return primary_contrast(self.results, r.comparator, self.cfg.primary_level, r.primary_target)

    @cached_property
    def oracles(self) -> pd.DataFrame:
        """The oracle contrasts at the largest shots level (`mvc.statistics.oracle_tests`; empty without oracles)."""
        return oracle_tests(self.results, shots=self.cfg.data.max_shots)

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


def _selection_log(cfg: StudyConfig) -> pd.DataFrame | None:
    path = cfg.paths.report / "selection" / "selection.csv"
    return pd.read_csv(path) if path.exists() else None


def _novel_table(metrics: pd.DataFrame) -> pd.DataFrame | None:
    if "novel_combinations" not in metrics or metrics["novel_combinations"].isna().all():
        return None
    return metrics[["synthetic_set", "images", "label_fidelity", "novel_combinations", "copies", "copies_pool",
                    "factor_probe_accuracy"]].round(4)


def _pseudo_label_table(d: ReportInputs) -> pd.DataFrame | None:
    """Per unit that ran self-training: how much of the pool its teacher labelled past the threshold, and how much
    of that it got right (from `runs/<study>/pseudo_labels/`)."""
    if "pseudo_label" not in set(d.results["method"]):
        return None
    files = [d.cfg.paths.pseudo_labels / f"{u.current_unit.name}.json" for u in d.cfg.units()]
    rows = [json.loads(f.read_text()) for f in files if f.exists()]
    return pd.DataFrame(rows) if rows else None


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
    ReportItem("oracle_controls", "table", "Main result",
               "MVC on the curve of the oracle controls at {data.max_shots} labelled images per class, each step a "
               "paired difference (top-1 points) with a t-test, Holm's correction over these steps, and mde80 (the "
               "difference detected with 80% power): oracle_real (real pool images of the class instead of "
               "generated ones, at MVC's M and p_synthetic), oracle_generator_res (those images through the "
               "generator's resolution and VAE), oracle_noisy (that set with a share 1 - f of its images from other "
               "classes, f MVC's label fidelity). {paired_interval}",
               lambda d: _nonempty(d.oracles)),
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
    ReportItem("primary_contrast", "table", "Ablations and tests",
               "The primary contrast, declared in the params before the run: the method under test minus "
               "{report.comparator} at the shots level of report.primary_shots (null: the largest), paired over "
               "classifier seeds; one test, not corrected (every other test is secondary). mde80: the difference it "
               "detects 80% of the time; units_for_target: the units (replicates, or seeds with one replicate) that "
               "would detect report.primary_target ({report.primary_target}) points at the spread seen. "
               "{paired_interval}", lambda d: _nonempty(d.primary)),
    ReportItem("paired_tests", "table", "Ablations and tests",
               "MVC minus each baseline (top-1 points) at each shots level, paired over classifier seeds, with a "
               "t-test and Holm's correction over the baselines of a level; the comparator fixed in advance is "
               "{report.comparator} (comparator = True); mde80: the smallest difference the same test detects with "
               "80% power (two-sided, 5%, before Holm's correction), so a difference not resolved may still be any "
               "size below it. {paired_interval}", lambda d: d.paired),
    ReportItem("pseudo_labels", "table", "Ablations and tests",
               "Self-training (pseudo_label), per unit: the pool images its teacher (the reference method's "
               "classifier of the unit's labelled images) labels at softmax confidence >= "
               "{classify.pseudo_label_threshold} (kept, kept_share), the share of those labelled right "
               "(kept_correct, from the pool's known labels, which no method trains on), and the teacher's accuracy "
               "on the whole pool.", _pseudo_label_table),
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
    ReportItem("novel_combinations", "table", "Image metrics",
               "Known concepts (a dataset that declares its factors): per set, the share of images whose combination "
               "of intended class and factors (read by one probe per factor, trained on the pool and scored on test: "
               "factor_probe_accuracy is the lowest) no labelled shot has, beside label fidelity and copies. The "
               "labelled images reach 0 by definition; oracle_real shows what drawing every combination gives; a "
               "probe's errors on blurred images also count as novel, so read a set's share beside "
               "oracle_generator_res's (real images through the same VAE).",
               lambda d: _novel_table(load_image_metrics(d.cfg))),
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
        out.append((item, f"{item.kind.title()} {counts[item.kind]}", format_caption(item.caption, cfg)))
    return out


def draw(cfg: StudyConfig, keys: list[str]) -> dict[str, Any]:
    """The items `keys` built without saving (what the notebooks show: a table, or a Figure, a PNG a stage drew
    shown as one), those the study has."""
    inputs = ReportInputs(cfg)
    built = {key: ITEM[key].build(inputs) for key in keys}
    return {k: figures.png_figure(v) if isinstance(v, Path) else v for k, v in built.items() if v is not None}
