"""Readers of what the stages leave in `runs/<study>/`: the one way a stage reads another stage's outputs.

Each reader first checks that the stage that writes the artifact finished with the current params, and
otherwise raises `MissingStageOutput` naming the stage (and notebook) to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mvc.config import StudyConfig
from mvc.embedding_cache import EMPTY_PROMPT, EmbeddingCache, caption_key
from mvc.imaging import images_to_tensor, to_array
from mvc.io import read_rows, rows_and_parts
from mvc.registry import MODELS, SETS, method_sets, set_spec, synthetic_set_names
from mvc.state import require, stage_info
from mvc.units import Unit, parse_shots

SPLITS = ("train", "pool", "val", "test")


# ----------------------------------------------------------------------------------------------------------
# data


def stored_splits(cfg: StudyConfig) -> pd.DataFrame:
    """`splits.csv` as the data stage wrote it: image_id, label, class_name, class_dir, split, source, with every
    labelled candidate (`data.labelled_per_class` per class) in split `train`."""
    require(cfg, "data")
    return pd.read_csv(cfg.paths.splits, keep_default_na=False)


def labelled_order(splits: pd.DataFrame, seed: int, replicate: int, redraw: bool) -> pd.Series:
    """Each train candidate's rank in its class: the data stage's order (by image id), or, for replicate r >= 1
    of a study with `redraw_labelled`, a permutation seeded by (seed, r). A shots level takes ranks below `shots`."""
    train = splits[splits["split"] == "train"].sort_values("image_id")
    if not redraw or replicate == 0:
        return train.groupby("label").cumcount()
    rng = np.random.default_rng([seed, replicate])
    keys = pd.Series(rng.permutation(len(train)), index=train.index)
    return keys.groupby(train["label"]).rank(method="first").astype(int) - 1


def load_splits(cfg: StudyConfig) -> pd.DataFrame:
    """The splits as this view's unit sees them (`cfg.unit(shots, r)`; outside a unit view, the main unit): its
    `shots` labelled images per class in split `train` (`labelled_order`), the other candidates in `unused`."""
    splits = stored_splits(cfg)
    if cfg.shots_now is not None:
        rank = labelled_order(splits, cfg.seed, cfg.replicate, cfg.replicate > 0 and cfg.redraw_labelled)
        splits.loc[rank[rank >= cfg.shots_now].index, "split"] = "unused"
    return splits


def load_images(cfg: StudyConfig) -> np.ndarray:
    """All prepared images, uint8 (N, H, W, C), memory-mapped; row = image_id."""
    require(cfg, "data")
    return np.load(cfg.paths.images, mmap_mode="r")


def read_skipped(cfg: StudyConfig) -> pd.DataFrame:
    """Images that could not be read, with the error (empty when none)."""
    require(cfg, "data")
    return pd.read_csv(cfg.paths.skipped, keep_default_na=False)


def class_names(splits: pd.DataFrame) -> list[str]:
    """Readable class names indexed by label."""
    return splits.drop_duplicates("label").sort_values("label")["class_name"].tolist()


def diffusion_images(cfg: StudyConfig, image_ids) -> torch.Tensor:
    """The study's prepared images `image_ids` as the diffusion model sees them: (N, 3, R, R) in [-1, 1]."""
    return images_to_tensor(np.asarray(load_images(cfg)[np.asarray(image_ids)]), cfg.backbone.resolution)


class DiffusionImages:
    """`diffusion_images` of many ids, made a slice at a time: 1,000 CIFAR images at 512 px would take 3 GiB at
    once, a batch of them a few MiB (`encode_latents` takes one)."""

    def __init__(self, cfg: StudyConfig, image_ids):
        self.images, self.ids, self.resolution = load_images(cfg), np.asarray(image_ids), cfg.backbone.resolution

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return images_to_tensor(np.asarray(self.images[self.ids[rows]]), self.resolution)


# ----------------------------------------------------------------------------------------------------------
# caption, embed


def load_captions(cfg: StudyConfig) -> pd.DataFrame:
    """`captions.csv`: image_id, split, label, caption, text (= prompt(y) + ", " + caption)."""
    require(cfg, "caption")
    return pd.read_csv(cfg.paths.captions, keep_default_na=False)


@dataclass
class CaptionEmbeddings:
    """The embedded captions of the labelled training images, in the order of `frame`."""

    frame: pd.DataFrame  # image_id, label, text (train split)
    embeddings: torch.Tensor  # (N, L, d)
    empty: torch.Tensor  # (L, d): the empty prompt, for classifier-free guidance

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy()

    def row_of(self, image_ids: np.ndarray) -> np.ndarray:
        pos = pd.Series(np.arange(len(self.frame)), index=self.frame["image_id"].to_numpy())
        return np.array(pos.loc[image_ids].to_numpy())


def training_captions(captions: pd.DataFrame) -> pd.DataFrame:
    """The captions of the labelled training images, by image id."""
    return captions[captions["split"] == "train"].sort_values("image_id").reset_index(drop=True)


def load_caption_embeddings(cfg: StudyConfig) -> CaptionEmbeddings:
    require(cfg, "embed")
    name = stage_info(cfg, "embed")["encoder"]
    train = training_captions(load_captions(cfg))
    splits = load_splits(cfg)
    train = train[train["image_id"].isin(splits.loc[splits["split"] == "train", "image_id"])].reset_index(drop=True)
    cache = EmbeddingCache(cfg.paths.embeddings)
    keys = [caption_key(name, t, cfg.text.max_length) for t in [EMPTY_PROMPT] + train["text"].tolist()]
    emb = cache.get(keys)
    return CaptionEmbeddings(train[["image_id", "label", "text"]], emb[1:], emb[0])


# ----------------------------------------------------------------------------------------------------------
# backbone, finetune


def backbone_source(cfg: StudyConfig) -> str:
    """Where the backbone lives: the study's surrogate folder, or the hub id / folder of the params."""
    if cfg.backbone.kind == "surrogate":
        require(cfg, "backbone")
        return str(cfg.paths.backbone)
    return cfg.backbone.model


def model_path(cfg: StudyConfig, name: str) -> Path:
    """This unit's fine-tuned model `name` (`mvc.registry.MODELS`): a diffusers pipeline folder."""
    model = MODELS[name]
    require(cfg, model.stage)
    return cfg.paths.model(name, model.stage)


def trained_model(cfg: StudyConfig, name: str) -> Path | None:
    """This unit's fine-tuned model `name`, or None when no set this unit makes needs it (the stage skipped it)."""
    require(cfg, MODELS[name].stage)
    return cfg.paths.model(name, MODELS[name].stage) if unit_needs_model(cfg, name) else None


def load_backbone_loss(cfg: StudyConfig) -> pd.DataFrame | None:
    """The surrogate's pretraining losses (part: vae or unet), or None for a pretrained backbone."""
    require(cfg, "backbone")
    return pd.read_csv(cfg.paths.backbone_loss) if cfg.paths.backbone_loss.exists() else None


def load_loss(cfg: StudyConfig) -> pd.DataFrame:
    """MVC fine-tuning loss per step."""
    return pd.read_csv(cfg.paths.finetune_loss)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete accelerate checkpoints `checkpoint-<step>` in `folder`, oldest first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


# ----------------------------------------------------------------------------------------------------------
# generate


def below_top_level(cfg: StudyConfig) -> bool:
    """True when this view is of a shots level below the largest and `curve_methods` narrows what runs there."""
    return cfg.curve_methods is not None and cfg.shots_now != cfg.data.max_shots


def methods_at_level(cfg: StudyConfig) -> list[str]:
    """The classifier methods run at this view's shots level: all of `classify.methods` at the largest level,
    those of `curve_methods` below it."""
    if below_top_level(cfg):
        return [m for m in cfg.classify.methods if m in cfg.curve_methods]
    return list(cfg.classify.methods)


def unit_set_names(cfg: StudyConfig) -> list[str]:
    """The synthetic sets this view of the study makes: all of them at the largest shots level, below it those
    the `curve_methods` draw from."""
    names = synthetic_set_names(cfg.generate)
    return [n for n in names if n in curve_sets(cfg)] if below_top_level(cfg) else names


def curve_sets(cfg: StudyConfig) -> set[str]:
    """The synthetic sets the `curve_methods` draw from."""
    return {s for m in cfg.curve_methods or () for s in method_sets(m, cfg.classify)}


def unit_needs_model(cfg: StudyConfig, name: str) -> bool:
    """True when this unit trains fine-tuned model `name`: MVC's always, another where a set it makes is sampled
    from it. Read from `generate.sets` and the per-mode families, not from `generate.modes` (every mode's set is
    sampled from its family's model), so a change of modes does not retrain the other models."""
    if MODELS[name].always:
        return True
    sets = [SETS[n] for n in cfg.generate.sets]
    families = [s for s in SETS.values() if s.per_mode]
    if below_top_level(cfg):
        wanted = curve_sets(cfg)
        sets = [s for s in sets if s.name in wanted]
        families = [f for f in families if any(set_spec(n)[0] is f for n in wanted)]
    return name in {s.model for s in sets + families}


def load_manifest(cfg: StudyConfig, name: str) -> pd.DataFrame:
    """`synthetic/<set>/manifest.csv`: image_id, source_image_id, index, label, mode, seed, path."""
    require(cfg, "generate")
    return pd.read_csv(cfg.paths.synthetic / name / "manifest.csv")


def load_manifests(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    return {n: load_manifest(cfg, n) for n in synthetic_set_names(cfg.generate)}


def load_synthetic(cfg: StudyConfig, name: str, resolution: int | None = None,
                   sources: list[int] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """A synthetic set's images as uint8 (N, H, W, C) at the data resolution and channels, with the manifest
    (only those made from `sources`, when given)."""
    rows = load_manifest(cfg, name)
    if sources is not None:
        rows = rows[rows["source_image_id"].isin(sources)].reset_index(drop=True)
    folder = cfg.paths.synthetic / name
    res = resolution or cfg.data.resolution
    imgs = []
    for p in rows["path"]:
        with Image.open(folder / p) as im:
            imgs.append(to_array(im, res, cfg.data.channels))
    return (np.stack(imgs) if imgs else np.zeros((0, res, res, cfg.data.channels), np.uint8)), rows


# ----------------------------------------------------------------------------------------------------------
# metrics, classify, report


def load_image_metrics(cfg: StudyConfig, all_units: bool = False) -> pd.DataFrame:
    """`image_metrics.csv`: the rows of this view's unit (outside a unit view, the main one), or with `all_units`
    those of every unit of the study's shots levels and replicates."""
    require(cfg, "metrics")
    rows = pd.read_csv(cfg.paths.image_metrics, keep_default_na=True, dtype={"shots": str})
    units = {(u.current_unit.label, u.replicate) for u in cfg.units()} if all_units else \
        {(cfg.current_unit.label, cfg.replicate)}
    keep = [(s, int(r)) in units for s, r in zip(rows["shots"], rows["replicate"])]
    return rows[keep].reset_index(drop=True)


RESULT_COLUMNS = ["dataset", "method", "seed", "replicate", "shots", "backbone", "variant", "top1", "top5", "steps",
                  "synthetic_share", "synthetic_per_source", "params_hash"]
RESULT_KEY = ["shots", "variant", "method", "seed"]  # one classifier run


def shots_label(shots: int | None) -> str:
    """A shots level as results.csv's `shots` column holds it: the count, or "all" (`data.shots: null`)."""
    return Unit(shots).label


def load_results(cfg: StudyConfig, require_done: bool = True) -> pd.DataFrame:
    """results.csv rows made with the current classify params at the study's shots levels (rows of an older params
    hash or of a level since removed are left out, and a run recorded twice counts once); `shots` as integers (a
    nullable column: <NA> for all images)."""
    if require_done:
        require(cfg, "classify")
        frames = [r for r in [read_rows(cfg.paths.results)] if r is not None]
    else:  # a grid in progress: its part files too
        frames = rows_and_parts(cfg.paths.results)
    if not frames:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    rows = pd.concat(frames)
    rows = rows[rows["params_hash"].astype(str) == cfg.stage_hash("classify")].copy()
    rows = rows[rows["shots"].astype(str).isin([Unit(s).label for s in cfg.data.shot_levels])]
    rows["shots"] = pd.array([parse_shots(v) for v in rows["shots"]], dtype="Int64")
    return rows.drop_duplicates(RESULT_KEY, keep="first").reset_index(drop=True)


def report_index(cfg: StudyConfig) -> Path:
    require(cfg, "report")
    return cfg.paths.index
