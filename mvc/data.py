"""Stage `data`: read a dataset, make seeded stratified splits and cache the images.

Writes `runs/<study>/splits.csv` (image_id, label, class_name, class_dir, split, source), `images.npy` (uint8,
N x H x W x C at the profile's resolution; row = image_id) and `skipped.csv` (unreadable files).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
from PIL import UnidentifiedImageError

from mvc.artifacts import SPLITS, stored_splits
from mvc.config import DataConfig, StudyConfig
from mvc.datasets import DataNotFound, Item
from mvc.imaging import to_array
from mvc.io import atomic_path, write_csv
from mvc.progress import progress
from mvc.registry import DATASETS
from mvc.state import stage

log = logging.getLogger(__name__)


def readable_name(class_dir: str, mapping: dict[str, str]) -> str:
    """The class name used in prompts: the mapping's, else the folder name with separators as spaces."""
    return mapping.get(class_dir, class_dir.replace("_", " ").replace("-", " ").strip().lower())


class DataError(ValueError):
    """The data cannot make the study asked for (too few classes or images, clashing class names)."""


def check_classes(class_dirs: list[str], names: dict[str, str], dataset: str) -> None:
    """At least two classes, and no two class folders that would share one prompt name."""
    if len(class_dirs) < 2:
        raise DataError(f"{dataset}: found {len(class_dirs)} class ({class_dirs}); a classification study needs at "
                        f"least two classes (check data.root and data.classes)")
    seen: dict[str, str] = {}
    for cls in sorted(class_dirs):
        key = re.sub(r"[^a-z0-9]+", " ", readable_name(cls, names).lower()).strip()
        if key in seen:
            raise DataError(f"{dataset}: class folders {seen[key]!r} and {cls!r} both become the class name "
                            f"{readable_name(cls, names)!r}; merge or rename one of them, or give them distinct "
                            f"names in data.class_names")
        seen[key] = cls


def check_counts(taken: dict[str, dict[str, int]], wanted: dict[str, dict[str, int]], allow_fewer: bool) -> list[str]:
    """The classes whose test, val, train or pool split came out short; an error unless `data.allow_fewer`."""
    short = [f"{cls}: {split} {taken[cls].get(split, 0)} of {n}" for cls in wanted for split, n in wanted[cls].items()
             if taken[cls].get(split, 0) < n]
    if short and not allow_fewer:
        raise DataError("too few readable images for the splits asked for (class: split got of wanted): "
                        + "; ".join(short[:10]) + (f"; and {len(short) - 10} more" if len(short) > 10 else "")
                        + ". Lower data.shots, data.val_per_class or data.pool_per_class, add images, or set "
                          "data.allow_fewer: true "
                          "(the real counts are then recorded and reported)")
    return short


Quota = tuple[str, "int | None", "list[int] | None"]  # (split, how many (None: all left), own candidates)


def assign_splits(items: list[Item], cfg: DataConfig, seed: int) -> dict[str, tuple[list[Quota], list[int]]]:
    """Per class, a seeded candidate order: {class: ([(split, quota, own candidates), ...], shared candidates)}.

    Official test items go to `test`; the others fill `test` (if the dataset has none), `val`, `train`
    (`labelled_per_class` candidates, from which every shots level draws; only items marked `labellable` where a
    dataset marks some not) and `pool`, in that order: no split depends on the shots levels. Candidates, not
    final: an unreadable item is skipped and the next one taken, so quotas stay exact.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_class.setdefault(item.class_dir, []).append(i)
    has_official_test = any(it.official == "test" for it in items)
    plan = {}
    for cls in sorted(by_class):
        idx = np.array(by_class[cls])[rng.permutation(len(by_class[cls]))].tolist()
        test_idx = [i for i in idx if items[i].official == "test"]
        rest = [i for i in idx if items[i].official != "test"]
        if cfg.max_images_per_class:
            rest, test_idx = rest[: cfg.max_images_per_class], test_idx[: cfg.max_images_per_class]
        n_test = len(test_idx) if has_official_test else max(1, round(cfg.test_fraction * len(rest)))
        if cfg.test_per_class:
            n_test = min(n_test, cfg.test_per_class)
        train_own = None
        if not all(items[i].labellable for i in rest):  # the dataset says which items may be labelled shots
            train_own = [i for i in rest if items[i].labellable][: cfg.labelled_per_class]
            rest = [i for i in rest if i not in set(train_own)]
        quotas = [("test", n_test, test_idx if has_official_test else None), ("val", cfg.val_per_class, None),
                  ("train", cfg.labelled_per_class, train_own), ("pool", cfg.pool_per_class, None)]
        plan[cls] = (quotas, rest)
    return plan


@stage("data", reader=stored_splits)
def prepare_dataset(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Read, split and cache the dataset (the splits table is what the stage returns)."""
    paths = cfg.paths
    reader = DATASETS[cfg.data.dataset].reader(cfg.data)  # as mvc.registry declares it
    items = reader.items()
    if cfg.data.classes:
        unknown = sorted(set(cfg.data.classes) - {it.class_dir for it in items})
        if unknown:
            raise ValueError(f"data.classes: {unknown} not found in {cfg.data.dataset}; "
                             f"available: {sorted({it.class_dir for it in items})[:20]}")
        items = [it for it in items if it.class_dir in cfg.data.classes]
    names = {**getattr(reader, "class_names", dict)(), **cfg.data.class_names}
    check_classes(sorted({it.class_dir for it in items}), names, cfg.data.dataset)
    plan = assign_splits(items, cfg.data, cfg.seed)
    classes = reader.class_order(list(plan))
    rows, arrays, skipped = [], [], []
    taken_per: dict[str, dict[str, int]] = {}
    wanted: dict[str, dict[str, int]] = {}
    bar = progress(total=sum(len(r) + sum(len(o or []) for _, _, o in q) for q, r in plan.values()),
                   desc="data: reading images", disable=not show_progress)
    for label, cls in enumerate(classes):
        quotas, rest = plan[cls]
        queue = list(rest)
        for split, quota, own in quotas:
            source = list(own) if own is not None else queue
            taken = 0
            if quota is not None:  # every split with a count, the pool included
                wanted.setdefault(cls, {})[split] = quota
            while source and (quota is None or taken < quota):
                i = source.pop(0)
                bar.update(1)
                try:
                    arr = to_array(reader.read(items[i]), cfg.data.resolution, cfg.data.channels,
                                   cfg.data.alpha_background)
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                    skipped.append({"source": items[i].source, "error": f"{type(err).__name__}: {err}"})
                    continue
                rows.append({"image_id": len(arrays), "label": label, "class_name": readable_name(cls, names),
                             "class_dir": cls, "split": split, "source": items[i].source})
                arrays.append(arr)
                taken += 1
            taken_per.setdefault(cls, {})[split] = taken
    bar.close()
    if skipped:
        log.warning("data: skipped %d unreadable image(s); listed in %s", len(skipped), paths.skipped)
    if not rows:
        raise DataNotFound(f"{cfg.data.dataset}: no readable images found under {cfg.data.root}")
    short = check_counts(taken_per, wanted, cfg.data.allow_fewer)
    frame = pd.DataFrame(rows)
    with atomic_path(paths.images, suffix=".npy") as tmp:
        np.save(tmp, np.stack(arrays))
    write_csv(paths.skipped, pd.DataFrame(skipped, columns=["source", "error"]))
    write_csv(paths.splits, frame)
    facts = {"images": len(frame), "skipped": len(skipped), "classes": len(classes)}
    return {**facts, "short_classes": short} if short else facts


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split."""
    table = splits.pivot_table(index="class_name", columns="split", values="image_id", aggfunc="count", fill_value=0)
    return table.reindex(columns=[s for s in SPLITS if s in table.columns])


