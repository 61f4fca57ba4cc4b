"""Stage `caption`: caption the chosen splits in batches, appending to `captions.csv` as it goes.

`runs/<study>/captions.csv` holds one row per image: image_id, split, label, caption, text, where
`text = prompt(y) + ", " + caption` is what the text encoder sees. An interrupted run continues after the last
complete row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvc.artifacts import load_images, load_splits
from mvc.captioners import Captioner, build_captioner, caption_text
from mvc.config import StudyConfig
from mvc.io import append_rows, read_rows
from mvc.progress import progress
from mvc.runtime import pick_device
from mvc.state import stage

CAPTION_COLUMNS = ["image_id", "split", "label", "caption", "text"]


@stage("caption")
def caption_dataset(cfg: StudyConfig, captioner: Captioner | None = None, show_progress: bool = True,
                    max_batches: int | None = None) -> dict | None:
    """Caption every image of `caption.splits` not captioned yet (`max_batches` stops early: tests use it to
    simulate an interruption)."""
    paths = cfg.paths
    splits = load_splits(cfg)
    todo = splits[splits["split"].isin(cfg.caption.splits)]
    done = read_rows(paths.captions)
    done_ids = set(done["image_id"].astype(int)) if done is not None else set()
    todo = todo[~todo["image_id"].isin(done_ids)]
    if len(todo):
        images = load_images(cfg)
        captioner = captioner or build_captioner(cfg.caption, pick_device(cfg.device))
        bs = cfg.caption.batch_size
        for n, lo in enumerate(progress(range(0, len(todo), bs), desc="caption", unit="batch",
                                        disable=not show_progress)):
            if max_batches is not None and n >= max_batches:
                return None
            chunk = todo.iloc[lo: lo + bs]
            caps = captioner(np.asarray(images[chunk["image_id"].to_numpy()]))
            rows = pd.DataFrame({
                "image_id": chunk["image_id"].to_numpy(), "split": chunk["split"].to_numpy(),
                "label": chunk["label"].to_numpy(), "caption": caps,
                "text": [caption_text(cfg.data.prompt_template, c, cap) for c, cap in zip(chunk["class_name"], caps)],
            })
            append_rows(paths.captions, rows[CAPTION_COLUMNS])
    return {"captions": len(read_rows(paths.captions))}
