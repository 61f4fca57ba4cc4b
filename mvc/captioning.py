"""Stage `caption`: caption the chosen splits in batches, appending to a part file as it goes.

`runs/<study>/captions.csv` holds one row per image: image_id, split, label, caption, text, where
`text = prompt(y) + ", " + caption` is what the text encoder sees. Under accelerate each process captions every
n-th batch of the images into its own part file; an interrupted run continues after the last complete row; the
parts are merged into captions.csv (by image id) when every image has its caption.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvc.artifacts import load_captions, load_images, stored_splits
from mvc.captioners import Captioner, caption_text
from mvc.config import StudyConfig
from mvc.io import append_rows, merge_parts, part_file, rows_and_parts
from mvc.progress import progress
from mvc.registry import CAPTIONERS
from mvc.runtime import process_state
from mvc.state import stage

CAPTION_COLUMNS = ["image_id", "split", "label", "caption", "text"]


def captioned_ids(cfg: StudyConfig) -> set[int]:
    """Images that already have a caption, in captions.csv or a part file."""
    found: set[int] = set()
    for rows in rows_and_parts(cfg.paths.captions):
        found |= set(rows["image_id"].astype(int))
    return found


def merge_captions(cfg: StudyConfig) -> int:
    """Fold the part files into captions.csv, one row per image, by image id; returns the row count."""
    return merge_parts(cfg.paths.captions, ["image_id"], CAPTION_COLUMNS, sort="image_id")


@stage("caption", reader=load_captions, distributed=True)
def caption_dataset(cfg: StudyConfig, captioner: Captioner | None = None, show_progress: bool = True,
                    max_batches: int | None = None) -> dict | None:
    """Caption every image of `caption.splits` not captioned yet (`max_batches` stops each process early: tests
    use it to simulate an interruption)."""
    dist = process_state(cfg.device)
    splits = stored_splits(cfg)
    wanted = splits[splits["split"].isin(cfg.caption.splits)]
    todo = wanted[~wanted["image_id"].isin(captioned_ids(cfg))]
    bs = cfg.caption.batch_size
    batches = list(range(0, len(todo), bs))[dist.process_index::dist.num_processes]
    part = part_file(cfg.paths.captions, dist.process_index)
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
    return {"captions": merge_captions(cfg), "processes": dist.num_processes, **device}
