"""Stage `classify`: every method of `classify.methods` x every seed (and the ablation grid), each run appended to
`results.csv` as it finishes, so an interrupted grid resumes where it stopped (docs/method.md, section 5)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mvc.artifacts import (
    RESULT_COLUMNS,
    RESULT_KEY,
    class_names,
    load_images,
    load_results,
    load_splits,
    load_synthetic,
    shots_label,
)
from mvc.classifiers import (
    PSEUDO_LABELLED,
    ClassificationData,
    RunSpec,
    evaluate,
    predict_logits,
    train_classifier,
)
from mvc.config import StudyConfig
from mvc.grid import grid, run_key
from mvc.imaging import to_chw
from mvc.io import append_rows, merge_parts, part_file, read_rows, rows_and_parts, write_json
from mvc.progress import progress
from mvc.registry import METHODS, method_sets, role_of, set_images_per_source
from mvc.runtime import pick_device, process_state
from mvc.source_domains import source_domain_images
from mvc.state import stage

log = logging.getLogger(__name__)


_JUDGES: dict[tuple, object] = {}


def judge_of(cfg: StudyConfig):
    """The judge of `mvc.judge` (the same recipe, data and seed as the metrics stage's, so the same network), trained
    once per process."""
    from mvc.judge import train_judge  # deferred: only the filtered methods need it

    key = (str(cfg.paths.run), cfg.stage_hash("classify"))
    if key not in _JUDGES:
        _JUDGES[key] = train_judge(cfg, pick_device(cfg.device))[0]
    return _JUDGES[key]


def judged_as_intended(cfg: StudyConfig, images: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """True for each synthetic image the judge labels as its intended class (never another class: an image is kept
    with its label, or left out)."""
    predicted = predict_logits(judge_of(cfg), images, pick_device(cfg.device)).argmax(1)
    return predicted.numpy() == np.asarray(labels)


def load_classification_data(cfg: StudyConfig, sets: list[str] = (), source: bool = False,
                             filtered: bool = False, label_noise: bool = False,
                             pseudo_labels: bool = False) -> ClassificationData:
    """The real train and test images, the named synthetic sets (with `filtered`, only their images the judge
    labels as intended; with `label_noise`, as wrong as MVC's: `add_label_noise`), (`source`) the labelled source
    domain and (`pseudo_labels`) the pseudo-labelled pool (`pseudo_labelled_pool`), as tensors."""
    splits, images = load_splits(cfg), load_images(cfg)
    train, test = splits[splits["split"] == "train"], splits[splits["split"] == cfg.classify.evaluate_on]
    data = ClassificationData(to_chw(images[train["image_id"].to_numpy()]), torch.tensor(train["label"].to_numpy()),
                              to_chw(images[test["image_id"].to_numpy()]), torch.tensor(test["label"].to_numpy()),
                              int(splits["label"].max()) + 1)
    row_of = pd.Series(np.arange(len(train)), index=train["image_id"].to_numpy())
    for name in sets:
        imgs, manifest = load_synthetic(cfg, name)
        data.synthetic[name] = (to_chw(imgs), row_of.loc[manifest["source_image_id"]].to_numpy(),
                                manifest["index"].to_numpy())
        if filtered:
            keep = judged_as_intended(cfg, data.synthetic[name][0], manifest["label"].to_numpy())
            data.synthetic[name] = tuple(part[keep] for part in data.synthetic[name])
            log.info("classify: the judge keeps %d of %d %s images", keep.sum(), len(keep), name)
        if label_noise:
            data.synthetic[name] = add_label_noise(data.synthetic[name], data.train_y.numpy(),
                                                   under_test_fidelity(cfg), np.random.default_rng([cfg.seed, 17]))
    if source:
        images, labels = source_domain_images(cfg, class_names(splits), labels=True)
        data.source = (to_chw(images), torch.tensor(labels))
    if pseudo_labels:
        data.synthetic[PSEUDO_LABELLED] = pseudo_labelled_pool(cfg, data)
    return data


def under_test_fidelity(cfg: StudyConfig) -> float:
    """f: the share of the method under test's first synthetic set that the judge labels as intended (the metrics
    stage's label_fidelity of that set, by the same judge)."""
    name = method_sets(role_of("under_test"), cfg.classify)[0]
    imgs, manifest = load_synthetic(cfg, name)
    return float(judged_as_intended(cfg, to_chw(imgs), manifest["label"].to_numpy()).mean())


def add_label_noise(part: tuple, train_y: np.ndarray, fidelity: float,
                    rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A synthetic set (images, source rows, index) with a seeded share 1 - `fidelity` of its images swapped for
    images of the same set whose source is of another class, each keeping its own source row (its intended label):
    the set made exactly as often wrong as a generator of that fidelity (`oracle_noisy`)."""
    images, rows, index = part
    labels = train_y[rows]
    wrong = rng.permutation(len(rows))[: round((1 - fidelity) * len(rows))]
    noisy = images.clone()
    for i in wrong:
        others = np.flatnonzero(labels != labels[i])
        if len(others):
            noisy[i] = images[others[rng.integers(len(others))]]
    log.info("classify: %d of %d images swapped for another class's (fidelity %.3f)", len(wrong), len(rows), fidelity)
    return noisy, rows, index


def pseudo_labelled_pool(cfg: StudyConfig, data: ClassificationData) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The unlabelled pool as a synthetic set of self-training: the reference method's classifier (trained on this
    unit's labelled images, seed `seed`) labels every pool image; those at softmax confidence >=
    `classify.pseudo_label_threshold` join, each given as "source" a labelled image of its predicted class (in
    turn, seeded), so that it replaces real images of that class as a generated image replaces its source."""
    splits, images = load_splits(cfg), load_images(cfg)
    pool = splits[splits["split"] == "pool"]
    if pool.empty:
        raise ValueError(f"pseudo_label trains on the unlabelled pool, but study {cfg.study!r} has none: raise "
                         "data.pool_per_class, or leave pseudo_label out of classify.methods")
    device = pick_device(cfg.device)
    teacher = train_classifier(data, RunSpec(role_of("reference"), cfg.seed), cfg.classify, cfg.data.resolution,
                               device)
    x = to_chw(images[pool["image_id"].to_numpy()])
    confidence, predicted = predict_logits(teacher, x, device).softmax(1).max(1)
    keep = (confidence >= cfg.classify.pseudo_label_threshold).numpy()
    predicted = predicted.numpy()
    rng, train_y = np.random.default_rng([cfg.seed, 23]), data.train_y.numpy()
    rows, index = np.full(len(x), -1), np.zeros(len(x), int)
    for label in np.unique(predicted[keep]):
        members = np.flatnonzero(keep & (predicted == label))
        own = rng.permutation(np.flatnonzero(train_y == label))
        rows[members] = own[np.arange(len(members)) % len(own)]
        index[members] = np.arange(len(members)) // len(own)
    keep &= rows >= 0
    truth = pool["label"].to_numpy()
    correct = float((predicted[keep] == truth[keep]).mean()) if keep.any() else float("nan")
    log.info("classify: pseudo-labels for %d of %d pool images (threshold %.2f), %.1f%% of them right",
             keep.sum(), len(x), cfg.classify.pseudo_label_threshold, 100 * correct)
    unit = cfg.current_unit
    write_json(cfg.paths.pseudo_labels / f"{unit.name}.json", {
        "shots": unit.label, "replicate": unit.replicate, "threshold": cfg.classify.pseudo_label_threshold,
        "pool_images": len(x), "kept": int(keep.sum()), "kept_share": round(float(keep.mean()), 4),
        "kept_correct": round(correct, 4) if keep.any() else None,
        "teacher_pool_accuracy": round(float((predicted == truth).mean()), 4)})
    return x[torch.from_numpy(keep)], rows[keep], index[keep]


def result_row(cfg: StudyConfig, spec: RunSpec, top1: float, top5: float, train_images: int) -> dict:
    """One row of results.csv; `steps`: those the run took on its `train_images` labelled images (`epochs` counts
    them per unit)."""
    c = cfg.classify
    per_source = sum(spec.max_per_source or set_images_per_source(cfg.generate, s) for s in spec.synthetic_sets)
    # the share of a batch's slots a synthetic image may take, by classify.combine (concat: M of every M + 1)
    p = {"synthetic_only": 1.0, "concat": per_source / (per_source + 1)}.get(c.combine, spec.p_synthetic)
    share = p * (1 - (c.two_phase_fraction if METHODS[spec.method].two_phase else 0)) \
        if METHODS[spec.method].draws_images(c) else 0.0
    return {"dataset": cfg.data.dataset, "method": spec.method, "seed": spec.seed, "replicate": spec.replicate,
            "shots": shots_label(spec.shots), "backbone": c.backbone, "variant": spec.variant,
            "top1": round(top1, 5), "top5": round(top5, 5), "steps": c.steps_for(train_images),
            "synthetic_share": round(share, 3), "synthetic_per_source": per_source,
            "params_hash": cfg.stage_hash("classify")}


def run_specs(cfg: StudyConfig, specs: list[RunSpec], part: Path, threads: int | None = None,
              show_progress: bool = False, max_runs: int | None = None) -> int:
    """Train and test the classifiers of `specs` in order, appending each result to `part` as it finishes."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    sets_at = {shots: sorted({g for s in specs if s.shots == shots for g in s.synthetic_sets})
               for shots in {s.shots for s in specs}}
    loaded: dict[tuple, ClassificationData] = {}  # per unit: its train split and the level's synthetic sets
    ran = 0
    for spec in progress(specs, desc="classify", unit="run", disable=not show_progress):
        if max_runs is not None and ran >= max_runs:
            break
        # a real-data method trains on replicate 0's labelled images unless replicates redraw them
        m = METHODS[spec.method]
        unit = (spec.shots, spec.replicate if m.draws_images(cfg.classify) or cfg.redraw_labelled else 0,
                bool(spec.synthetic_sets), m.source, m.filtered, m.label_noise, m.pseudo_labels)
        if unit not in loaded:
            if any(key[0] != spec.shots for key in loaded):
                loaded.clear()  # the units of one shots level at a time (the grid is ordered by level)
            loaded[unit] = load_classification_data(cfg.unit(*unit[:2]), sets_at[spec.shots] if unit[2] else [],
                                                    *unit[3:])
        data = loaded[unit]
        model = train_classifier(data, spec, cfg.classify, cfg.data.resolution, device)
        top1, top5 = evaluate(model, data.test_x, data.test_y, device)
        append_rows(part, pd.DataFrame([result_row(cfg, spec, top1, top5, len(data.train_y))], columns=RESULT_COLUMNS))
        ran += 1
    return ran


def _worker(job: tuple) -> int:
    return run_specs(*job)


def finished_runs(cfg: StudyConfig) -> set[tuple]:
    """`run_key` of every run recorded with the current params, in results.csv or a part file."""
    h = cfg.stage_hash("classify")
    found = set()
    for rows in rows_and_parts(cfg.paths.results):
        rows = rows[rows["params_hash"].astype(str) == h]
        found |= set(zip(rows["shots"].astype(str), rows["variant"], rows["method"], rows["seed"].astype(int)))
    return found


def merge_results(cfg: StudyConfig) -> None:
    """Fold the part files into results.csv (a run recorded twice counts once), then delete them."""
    merge_parts(cfg.paths.results, ["params_hash", *RESULT_KEY], RESULT_COLUMNS)


def _run_in_workers(cfg: StudyConfig, specs: list[RunSpec], workers: int, show_progress: bool,
                    max_runs: int | None) -> int:
    """`specs` spread over `workers` processes of one thread each (the small classifiers are overhead-bound)."""
    jobs = [(cfg, specs[w::workers], part_file(cfg.paths.results, 0, w), 1, False, max_runs)
            for w in range(workers)]
    bar = progress(total=len(specs), desc=f"classify ({workers} workers)", unit="run", disable=not show_progress)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, job) for job in jobs]
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            bar.n = sum(len(r) for job in jobs if (r := read_rows(job[2])) is not None)
            bar.refresh()
        ran = sum(f.result() for f in futures)
    bar.close()
    return ran


@stage("classify", reader=load_results, distributed=True)
def classify_all(cfg: StudyConfig, show_progress: bool = True, max_runs: int | None = None) -> dict | None:
    """Run the grid; resumable (`max_runs` stops each process early). Under accelerate each process takes every
    n-th run; on one process `classify.workers` processes share the grid. Each run's row is appended to a part
    file as it finishes; the parts are merged into results.csv when the grid is complete."""
    dist = process_state(cfg.device)
    specs = grid(cfg)
    done = finished_runs(cfg)
    todo = [s for s in specs if run_key(s) not in done]
    mine = todo[dist.process_index::dist.num_processes]
    workers = min(cfg.classify.workers, len(mine)) if dist.num_processes == 1 else 1
    show = show_progress and dist.is_main_process
    if workers > 1:
        ran = _run_in_workers(cfg, mine, workers, show, max_runs)
    else:
        ran = run_specs(cfg, mine, part_file(cfg.paths.results, dist.process_index, 0), None, show, max_runs)
    dist.wait_for_everyone()
    if any(run_key(s) not in finished_runs(cfg) for s in specs):
        return None  # stopped early: the parts stay, and the next call runs what is left
    if not dist.is_main_process:
        return {}
    merge_results(cfg)
    return {"runs": len(load_results(cfg, require_done=False)), "ran_this_call": ran,
            "processes": dist.num_processes, "workers": max(1, workers), "device": pick_device(cfg.device)}
