"""Stage `caption`: caption the chosen splits in batches, appending to a part file as it goes.

`runs/<study>/captions.csv` holds one row per image: image_id, split, label, caption, text, where
`text = prompt(y) + ", " + caption` is what the text encoder sees. Under accelerate each process captions every
n-th batch of the images into its own part file; an interrupted run continues after the last complete row; the
parts are merged into captions.csv (by image id) when every image has its caption.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from mvc.artifacts import load_captions, load_images, stored_splits
from mvc.captioners import Captioner, caption_text
from mvc.config import StudyConfig
from mvc.io import append_rows, read_rows, write_csv
from mvc.progress import progress
from mvc.registry import CAPTIONERS
from mvc.state import stage

CAPTION_COLUMNS = ["image_id", "split", "label", "caption", "text"]


def part_files(cfg: StudyConfig) -> list[Path]:
    """The per-process caption files of a run in progress."""
    return sorted(cfg.paths.run.glob(".captions-part-*.csv"))


def captioned_ids(cfg: StudyConfig) -> set[int]:
    """Images that already have a caption, in captions.csv or a part file."""
    found: set[int] = set()
    for f in [cfg.paths.captions, *part_files(cfg)]:
        rows = read_rows(f)
        if rows is not None:
            found |= set(rows["image_id"].astype(int))
    return found


def merge_parts(cfg: StudyConfig) -> int:
    """Fold the part files into captions.csv, one row per image, by image id; returns the row count."""
    frames = [r for f in [cfg.paths.captions, *part_files(cfg)] if (r := read_rows(f)) is not None]
    merged = pd.concat(frames).drop_duplicates("image_id").sort_values("image_id")
    write_csv(cfg.paths.captions, merged[CAPTION_COLUMNS])
    for f in part_files(cfg):
        f.unlink()
    return len(merged)


@stage("caption", reader=load_captions, distributed=True)
def caption_dataset(cfg: StudyConfig, captioner: Captioner | None = None, show_progress: bool = True,
                    max_batches: int | None = None) -> dict | None:
    """Caption every image of `caption.splits` not captioned yet (`max_batches` stops each process early: tests
    use it to simulate an interruption)."""
    dist = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    splits = stored_splits(cfg)
    wanted = splits[splits["split"].isin(cfg.caption.splits)]
    todo = wanted[~wanted["image_id"].isin(captioned_ids(cfg))]
    bs = cfg.caption.batch_size
    batches = list(range(0, len(todo), bs))[dist.process_index::dist.num_processes]
    part = cfg.paths.run / f".captions-part-{dist.process_index}.csv"
    if batches:
        images = load_images(cfg)
        captioner = captioner or CAPTIONERS[cfg.caption.backend].build(cfg.caption, str(dist.device))
        for n, lo in enumerate(progress(batches, desc="caption", unit="batch",
                                        disable=not (show_progress and dist.is_main_process))):
            if max_batches is not None and n >= max_batches:
                break
            chunk = todo.iloc[lo: lo + bs]
            caps = captioner(np.asarray(images[chunk["image_id"].to_numpy()]))
            rows = pd.DataFrame({
                "image_id": chunk["image_id"].to_numpy(), "split": chunk["split"].to_numpy(),
                "label": chunk["label"].to_numpy(), "caption": caps,
                "text": [caption_text(cfg.data.prompt_template, c, cap) for c, cap in zip(chunk["class_name"], caps)],
            })
            append_rows(part, rows[CAPTION_COLUMNS])
    dist.wait_for_everyone()
    if len(captioned_ids(cfg) & set(wanted["image_id"])) < len(wanted):
        return None  # stopped early: the parts stay, and the next call captions what is left
    if not dist.is_main_process:
        return {}
    device = {"device": str(dist.device)} if CAPTIONERS[cfg.caption.backend].on_device else {}  # where it ran
    return {"captions": merge_parts(cfg), "processes": dist.num_processes, **device}
