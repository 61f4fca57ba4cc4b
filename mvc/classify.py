"""Stage `classify`: every method of `classify.methods` x every seed (and the ablation grid), each run appended to
`results.csv` as it finishes, so an interrupted grid resumes where it stopped (docs/method.md, section 5)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from mvc.artifacts import RESULT_COLUMNS, load_results, load_images, load_splits, load_synthetic
from mvc.classifiers import (SYNTHETIC_METHODS, ClassificationData, RunSpec, SyntheticSampler, evaluate,
                             train_classifier)
from mvc.config import ClassifyConfig, StudyConfig
from mvc.imaging import to_chw
from mvc.io import append_rows
from mvc.progress import progress
from mvc.runtime import pick_device
from mvc.state import stage

log = logging.getLogger(__name__)


def load_classification_data(cfg: StudyConfig, sets: list[str] = ()) -> ClassificationData:
    """The real train and test images and the named synthetic sets, as tensors."""
    splits, images = load_splits(cfg), load_images(cfg)
    train, test = splits[splits["split"] == "train"], splits[splits["split"] == "test"]
    data = ClassificationData(to_chw(images[train["image_id"].to_numpy()]), torch.tensor(train["label"].to_numpy()),
                              to_chw(images[test["image_id"].to_numpy()]), torch.tensor(test["label"].to_numpy()),
                              int(splits["label"].max()) + 1)
    row_of = pd.Series(np.arange(len(train)), index=train["image_id"].to_numpy())
    for name in sets:
        imgs, manifest = load_synthetic(cfg, name)
        data.synthetic[name] = (to_chw(imgs), row_of.loc[manifest["source_image_id"]].to_numpy(),
                                manifest["index"].to_numpy())
    return data


def mvc_set_names(c: ClassifyConfig, modes: list[str] | None = None) -> tuple[str, ...]:
    """The MVC synthetic sets the mvc methods draw from."""
    return tuple(f"mvc_{m.replace('+', '_')}" for m in (modes or c.mvc_modes))


def grid(cfg: StudyConfig) -> list[RunSpec]:
    """The main grid (every method x seed) and, with `classify.ablation`, the ablation grid."""
    c, g = cfg.classify, cfg.generate
    specs = []
    for method in c.methods:
        sets = ("naive",) if method == "sd_naive" else mvc_set_names(c) if method in SYNTHETIC_METHODS else ()
        specs += [RunSpec(method, s, "main", sets, c.p_synthetic) for s in c.seeds]
    if c.ablation:
        ab_seeds = c.seeds[: max(3, len(c.seeds) // 2)]
        for mode in g.modes:
            if [mode] != list(c.mvc_modes):
                specs += [RunSpec("mvc", s, f"mode={mode}", mvc_set_names(c, [mode]), c.p_synthetic) for s in ab_seeds]
        for m in sorted({1, max(1, g.images_per_source // 2)} - {g.images_per_source}):
            specs += [RunSpec("mvc", s, f"M={m}", mvc_set_names(c), c.p_synthetic, m) for s in ab_seeds]
        for p in sorted({0.25, 0.75, 1.0} - {c.p_synthetic}):
            specs += [RunSpec("mvc", s, f"p_synthetic={p}", mvc_set_names(c), p) for s in ab_seeds]
    return specs


@stage("classify")
def classify_all(cfg: StudyConfig, show_progress: bool = True, max_runs: int | None = None) -> dict | None:
    """Run the grid, appending a row to results.csv as each run finishes; resumable (`max_runs` stops early)."""
    paths = cfg.paths
    device = pick_device(cfg.device)
    specs = grid(cfg)
    h = cfg.stage_hash("classify")
    done = load_results(cfg, require_done=False)
    finished = set(zip(done["variant"], done["method"], done["seed"])) if len(done) else set()
    todo = [s for s in specs if (s.variant, s.method, s.seed) not in finished]
    data = load_classification_data(cfg, sorted({g for s in specs for g in s.synthetic_sets}))
    c = cfg.classify
    for n, spec in enumerate(progress(todo, desc="classify", unit="run", disable=not show_progress)):
        if max_runs is not None and n >= max_runs:
            return None
        model = train_classifier(data, spec, c, cfg.data.resolution, device)
        top1, top5 = evaluate(model, data.test_x, data.test_y, device)
        share = spec.p_synthetic * (1 - (c.two_phase_fraction if spec.method == "mvc_two_phase" else 0)) \
            if spec.synthetic_sets else 0.0
        append_rows(paths.results, pd.DataFrame([{
            "dataset": cfg.data.dataset, "method": spec.method, "seed": spec.seed,
            "shots": cfg.data.shots if cfg.data.shots else "all", "backbone": c.backbone, "variant": spec.variant,
            "top1": round(top1, 5), "top5": round(top5, 5), "steps": c.steps, "synthetic_share": round(share, 3),
            "params_hash": h}], columns=RESULT_COLUMNS))
    return {"runs": len(load_results(cfg, require_done=False))}


def example_batch(cfg: StudyConfig, method: str = "mvc", n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One training batch of `method` before augmentation, as uint8 (n, H, W, C) images, and which of them are
    synthetic replacements of their real source (notebook 05)."""
    c = cfg.classify
    spec = next((s for s in grid(cfg) if s.method == method), RunSpec(method, seed))
    data = load_classification_data(cfg, list(spec.synthetic_sets))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(data.train_y), n)
    x, used = data.train_x[rows], np.zeros(n, bool)
    if spec.synthetic_sets:
        x, used = SyntheticSampler(data, list(spec.synthetic_sets))(rows, spec.p_synthetic, rng, x)
    return x.permute(0, 2, 3, 1).numpy(), used

