"""Stage `metrics`: per synthetic set, distance to the real domain (FID, KID), label fidelity, diversity.

For FID, KID and diversity every set (the real `metrics.reference_split`, the real training images `real_train`,
each synthetic set) is cut to the same class-stratified sample: `images_per_class` images of every class, the most
every set can give, capped by `metrics.max_images` / classes, drawn by a numpy Generator seeded with `seed`. Label
fidelity and copies use every image of a set. Measured:
- FID (torchmetrics) and KID against the reference sample, on the features `metrics.feature_extractor` names:
  - `classifier`: the penultimate layer of a small CNN (the "judge", below);
  - `efficientnet_lite0`: ImageNet-pretrained EfficientNet-Lite0 (timm), weights from the registry package;
  - `inception`: torchmetrics' FID Inception fed uint8 images, weights from `metrics.inception_weights` (or the
    torch hub cache); they cannot be fetched offline.
  KID is estimated on `metrics.kid_subsets` random subsets of `metrics.kid_subset_size` images: mean, std and the
  2.5 / 97.5 percentiles of the per-subset estimates;
- label fidelity: the accuracy on the set of the judge, a small CNN trained on real images of
  `metrics.judge_splits` (never `train`, the images MVC generates from); its accuracy on the real test split is
  recorded as `judge_accuracy_on_real`, and on the same images after the backbone's VAE encodes and decodes them
  as `judge_accuracy_through_vae` (what a generator drawing the real images exactly would reach: what the
  bottleneck keeps);
- diversity: the mean pairwise feature distance within a class, averaged over classes;
- memorization: `copies`, the share of images whose nearest labelled training image is closer than a third of the
  second nearest, and their median nearest distance over the real-to-real one (`nn_distance_vs_real`); the same
  test against the unlabelled pool (`copies_pool`) and the labelled source domain (`copies_source`), the other
  images the generator learnt from (NaN where the study has none);
- novel combinations (datasets that declare their factors, e.g. the `concepts` testbed): the share of a set's
  images whose (intended class, factors read by probes trained on the pool) none of the labelled shots has, and
  the probes' lowest accuracy on test (`mvc.factor_probes`).

Every unit (shots level x replicate) is measured, each with its own labelled images and synthetic sets, its own
stratified sample size and a sampling seed of its own (so a resumed stage measures as an uninterrupted one); the
judge, the feature extractor and the reference split are shared. Each row also says how far mixing and
other-image conditioning can act in its unit (`effective_design`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvc.artifacts import (
    class_names,
    load_captions,
    load_image_metrics,
    load_images,
    load_splits,
    load_synthetic,
    stored_splits,
    unit_set_names,
)
from mvc.classifiers import evaluate
from mvc.config import StudyConfig
from mvc.factor_probes import FactorProbes, combinations, known_factors, novel_share
from mvc.image_measures import (
    FeatureModule,
    efficientnet_lite0_features,
    extract_features,
    feature_diversity,
    frechet_distance,
    inception_features,
    kid_subset_scores,
    kid_summary,
    memorization,
    nearest_two,
    stratified_sample,
)
from mvc.imaging import to_chw
from mvc.io import read_rows, write_csv
from mvc.judge import judge_accuracy, judge_accuracy_through_vae, split_images, train_judge
from mvc.progress import progress
from mvc.registry import DATASETS, set_mode
from mvc.runtime import pick_device, seed_everything
from mvc.source_domains import source_domain_images
from mvc.state import stage

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["shots", "replicate", "synthetic_set", "mode", "images", "images_per_class", "fid", "kid_mean",
                  "kid_std", "kid_ci95_low", "kid_ci95_high", "label_fidelity", "diversity", "copies", "nn_distance",
                  "nn_distance_vs_real", "copies_pool", "copies_source", "judge_accuracy_on_real",
                  "judge_accuracy_through_vae", "novel_combinations", "factor_probe_accuracy", "feature_extractor",
                  "captions_per_class", "distinct_caption_share", "mixable_classes", "partners_per_class"]

ImageSet = tuple[torch.Tensor, np.ndarray, str]  # uint8 NCHW images, labels, mode


@dataclass
class Instruments:
    """What every set is measured with: the judge, the feature extractor, the reference sample's features."""

    judge: nn.Module
    features: nn.Module  # on `device`, as the judge
    reference: torch.Tensor  # features of the reference sample, float64 (N, d)
    judge_accuracy: float  # the judge's accuracy on the real test split
    judge_through_vae: float  # ... and on those images through the backbone's VAE (what the bottleneck keeps)
    train: torch.Tensor  # the unit's labelled training images (uint8 NCHW): what a copy would copy
    real_nearest: float  # median pixel distance from a training image to its nearest other one
    device: str = "cpu"  # where the judge and the feature extractor run
    pool: torch.Tensor | None = None  # the unlabelled pool (uint8 NCHW), None when the study has none
    source: torch.Tensor | None = None  # the labelled source domain at the data resolution, None when none
    probes: FactorProbes | None = None  # a probe per known factor (datasets that declare factors), else None
    labelled: set[tuple] | None = None  # the (class, factors...) combinations of the unit's labelled shots


def feature_extractor(cfg: StudyConfig, judge: nn.Module) -> nn.Module:
    """The features FID, KID and diversity are computed on (`metrics.feature_extractor`)."""
    name = cfg.metrics.feature_extractor
    if name == "classifier":
        return FeatureModule(judge.features)
    if name == "efficientnet_lite0":
        return efficientnet_lite0_features()
    return inception_features(cfg.metrics.inception_weights)


def image_sets(cfg: StudyConfig) -> tuple[ImageSet, dict[str, ImageSet]]:
    """The real reference split, and the sets measured against it: `real_train` and every synthetic set."""
    splits, images = load_splits(cfg), load_images(cfg)
    ref_x, ref_y = split_images(splits, images, [cfg.metrics.reference_split])
    train_x, train_y = split_images(splits, images, ["train"])
    sets = {"real_train": (train_x, train_y.numpy(), "real")}
    for name in unit_set_names(cfg):
        imgs, manifest = load_synthetic(cfg, name)
        mode = set_mode(cfg.generate, name)
        sets[name] = (to_chw(imgs), manifest["label"].to_numpy(), mode)
    return (ref_x, ref_y.numpy(), "real"), sets


def images_per_class(labels: dict[str, np.ndarray], num_classes: int, max_images: int) -> int:
    """The most images of every class every set can give, capped by `max_images` / classes."""
    cap = max_images // num_classes
    if cap < 1:
        raise ValueError(f"metrics.max_images={max_images} is fewer than the {num_classes} classes: raise it")
    for name, y in labels.items():
        counts = np.bincount(np.asarray(y, dtype=int), minlength=num_classes)
        if counts.min() == 0:
            raise ValueError(f"set {name!r} has no image of class {int(counts.argmin())}: the sets cannot be "
                             "sampled class by class")
        cap = min(cap, int(counts.min()))
    return cap


def measure(name: str, imgs: torch.Tensor, labels: np.ndarray, keep: np.ndarray, cfg: StudyConfig,
            tools: Instruments, rng: np.random.Generator, own: torch.Tensor | None = None) -> dict:
    """The row of one set: FID, KID with its interval and diversity on its stratified sample `keep` (the same size
    in every row), label fidelity and copies on all its images."""
    feats = extract_features(tools.features, imgs[keep])
    m = cfg.metrics
    kid = kid_summary(kid_subset_scores(tools.reference, feats, m.kid_subsets, m.kid_subset_size, rng))
    copies = memorization(imgs, tools.train, tools.real_nearest, own)
    for key, bank in (("copies_pool", tools.pool), ("copies_source", tools.source)):
        copies[key] = memorization(imgs, bank, tools.real_nearest)["copies"] if bank is not None else float("nan")
    return {"synthetic_set": name, "images": len(imgs), "fid": frechet_distance(tools.reference, feats), **kid,
            "label_fidelity": evaluate(tools.judge, imgs, torch.tensor(labels), tools.device)[0],
            "diversity": feature_diversity(feats, labels[keep]), **copies,
            "judge_accuracy_on_real": tools.judge_accuracy, "judge_accuracy_through_vae": tools.judge_through_vae,
            "novel_combinations": novel_share(tools.probes, imgs, labels, tools.labelled) if tools.probes else np.nan,
            "factor_probe_accuracy": min(tools.probes.accuracy.values()) if tools.probes else np.nan,
            "feature_extractor": m.feature_extractor}


def effective_design(cfg: StudyConfig) -> dict[str, float]:
    """How far mixing and other-image conditioning can act in this view's unit: the mean number of distinct captions
    among a class's labelled images, the mean share of a class's labelled images whose caption is distinct (distinct
    captions / images: 1 when the captioner tells every image apart; under half, mixing has little to mix), the share
    of classes with at least two (a coarse or fine mix of one caption is that caption: mixing cannot act there), and
    the fewest other labelled images of a class (the partners `finetune.cond_image: other` can draw; 0: the target
    conditions itself, 1: the partner is fixed)."""
    splits = load_splits(cfg)
    train = splits[splits["split"] == "train"]
    captions = load_captions(cfg).set_index("image_id")
    texts = captions.loc[train["image_id"], "text"].to_numpy()
    by_class = pd.Series(texts).groupby(train["label"].to_numpy())
    distinct = by_class.nunique()
    return {"captions_per_class": round(float(distinct.mean()), 2),
            "distinct_caption_share": round(float((distinct / by_class.size()).mean()), 3),
            "mixable_classes": float((distinct > 1).mean()),
            "partners_per_class": int(train.groupby("label").size().min()) - 1}


def other_banks(cfg: StudyConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The other images the generator learnt from, at the data resolution: the unlabelled pool and the labelled
    source domain (None where the study has none)."""
    splits, images = stored_splits(cfg), load_images(cfg)
    pool = split_images(splits, images, ["pool"])[0]
    source = source_domain_images(cfg, class_names(splits))
    return (pool if len(pool) else None), (to_chw(source) if source is not None else None)


def measure_unit(unit: StudyConfig, judge: nn.Module, features: nn.Module, judge_acc: tuple[float, float],
                 banks: tuple, device: str, probes: FactorProbes | None = None) -> list[dict]:
    """The rows of one unit: its real training images and each of its synthetic sets."""
    rng = np.random.default_rng([unit.seed, unit.shots_now or 0, unit.replicate])
    (ref_x, ref_y, _), sets = image_sets(unit)
    n = images_per_class({unit.metrics.reference_split: ref_y, **{k: s[1] for k, s in sets.items()}},
                         int(ref_y.max()) + 1, unit.metrics.max_images)
    ref = stratified_sample(ref_y, n, rng)
    train_x = sets["real_train"][0]
    real_nearest = float(nearest_two(train_x, train_x, torch.arange(len(train_x)))[0].median()) \
        if len(train_x) > 2 else float("nan")
    labelled = None
    if probes is not None:
        splits = load_splits(unit)
        train = splits[splits["split"] == "train"]
        labelled = set(combinations(train["label"], known_factors(unit, train)))
    tools = Instruments(judge, features, extract_features(features, ref_x[ref]), *judge_acc, train_x, real_nearest,
                        device, *banks, probes=probes, labelled=labelled)
    design = {"shots": unit.current_unit.label, "replicate": unit.replicate, **effective_design(unit)}
    rows = []
    for name, (x, y, mode) in sets.items():
        keep = stratified_sample(y, n, rng)
        own = torch.arange(len(x)) if name == "real_train" else None  # a training image is not its own copy
        rows.append({**design, **measure(name, x, y, keep, unit, tools, rng, own), "mode": mode,
                     "images_per_class": n})
        log.info("metrics %s %s: %s", unit.current_unit.name, name, rows[-1])
    return rows


@stage("metrics", reader=load_image_metrics)
def image_metrics(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Rows per unit, synthetic set (and the real training images as a reference) in `image_metrics.csv`, written
    after each unit; a unit already in it (an interrupted run, or a level added since) is not measured again."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)  # the judge and the feature extractor run where the study runs
    judge, judge_data = train_judge(cfg, device)
    judge_acc = (judge_accuracy(cfg, judge, judge_data, device),  # on real images, and through the VAE
                 judge_accuracy_through_vae(cfg, judge, judge_data, device))
    features = feature_extractor(cfg, judge).to(device).eval()
    banks = other_banks(cfg)
    probes = FactorProbes(cfg, stored_splits(cfg), load_images(cfg), device) \
        if DATASETS[cfg.data.dataset].factors is not None else None
    rows = read_rows(cfg.paths.image_metrics)
    rows = [] if rows is None else rows.to_dict("records")
    done = {(str(r["shots"]), int(r["replicate"])) for r in rows}
    for unit in progress(cfg.units(), desc="metrics", unit="unit", disable=not show_progress):
        if (unit.current_unit.label, unit.replicate) in done:
            continue
        rows += measure_unit(unit, judge, features, judge_acc, banks, device, probes)
        write_csv(cfg.paths.image_metrics, pd.DataFrame(rows, columns=METRIC_COLUMNS))
    main = [r for r in rows if (str(r["shots"]), int(r["replicate"])) == (cfg.current_unit.label, 0)]
    return {"judge_accuracy_on_real": judge_acc[0], "judge_accuracy_through_vae": judge_acc[1],
            "judge_splits": list(cfg.metrics.judge_splits),
            "judge_images": len(judge_data.train_y), "images_per_class": main[0]["images_per_class"] if main else None,
            "units": len(cfg.units()), "device": str(device)}
