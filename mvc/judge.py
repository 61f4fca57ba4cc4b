"""The judge of label fidelity: a classifier (`metrics.judge_backbone`) trained on real images of
`metrics.judge_splits` (never `train`, the images MVC generates from), read by the metrics stage (label fidelity,
its own accuracy on real images) and by the classify stage (`mvc_filtered` keeps the images it labels as intended).
An evaluation instrument only: no compared classifier sees the pool's labels. Trained once per study and recipe, and
kept under `runs/<study>/judge/` (`StudyPaths.judge`)."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvc.artifacts import backbone_source, load_images, load_splits
from mvc.classifiers import ClassificationData, RunSpec, build_classifier, evaluate, train_classifier
from mvc.config import ClassifyConfig, StudyConfig
from mvc.imaging import images_to_tensor, tensor_to_images, to_array, to_chw
from mvc.io import atomic_path
from mvc.registry import role_of
from mvc.stages import JUDGE_RECIPE

log = logging.getLogger(__name__)


def split_images(splits: pd.DataFrame, images: np.ndarray, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and labels of the real images in the splits `names`."""
    rows = splits[splits["split"].isin(names)]
    return to_chw(images[rows["image_id"].to_numpy()]), torch.tensor(rows["label"].to_numpy())


def train_judge(cfg: StudyConfig, device: str = "cpu") -> tuple[nn.Module, ClassificationData]:
    """The judge (`metrics.judge_backbone`) trained on real images of the judge splits (crop augmentation only), or
    read back from `runs/<study>/judge/` where the same judge was trained before; its test data: the split
    `metrics.judge_scored_on` (test; val when `mvc select` chooses a recipe, which never reads test)."""
    splits, images = load_splits(cfg), load_images(cfg)
    train_x, train_y = split_images(splits, images, list(cfg.metrics.judge_splits))
    if len(train_y) == 0:
        raise ValueError(f"metrics.judge_splits {list(cfg.metrics.judge_splits)} hold no images in study "
                         f"{cfg.study!r} (data.val_per_class={cfg.data.val_per_class}, data.pool_per_class="
                         f"{cfg.data.pool_per_class}); give the judge a split with images (never 'train')")
    test_x, test_y = split_images(splits, images, [cfg.metrics.judge_scored_on])
    data = ClassificationData(train_x, train_y, test_x, test_y, int(splits["label"].max()) + 1)
    name = cfg.metrics.judge_backbone
    c = ClassifyConfig(**{f: getattr(cfg.classify, f) for f in JUDGE_RECIPE}, methods=[role_of("reference")],
                       steps=cfg.metrics.judge_steps, backbone=name, pretrained=name != "small_cnn", small_cnn_width=32)
    key = hashlib.sha256(json.dumps({
        "data": cfg.stage_hash("data"), "splits": list(cfg.metrics.judge_splits), "recipe": c.model_dump(mode="json"),
        "seed": cfg.seed, "resolution": cfg.data.resolution, "device": torch.device(device).type,
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cfg.paths.judge / f"{name.replace(':', '_')}-{key}.pt"
    if path.exists():  # the same judge (the same images, recipe and seed) trained by an earlier stage or trial
        model = build_classifier(name, data.num_classes, train_x.shape[1], c.pretrained, c.small_cnn_width,
                                 c.input_size)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        layout = torch.channels_last if c.channels_last else torch.contiguous_format
        return model.to(device, memory_format=layout).eval(), data
    model = train_classifier(data, RunSpec(role_of("reference"), cfg.seed), c, cfg.data.resolution, device)
    with atomic_path(path) as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    return model, data


def judge_accuracy(cfg: StudyConfig, judge: nn.Module, data: ClassificationData, device: str = "cpu") -> float:
    """The judge's accuracy on the real images of `metrics.judge_scored_on`; nan where it learnt from that split (the
    selection of a study without a pool trains and scores it on val): its own training images would overstate it."""
    split = cfg.metrics.judge_scored_on
    if split in cfg.metrics.judge_splits:
        log.info("metrics: the judge learnt from the %s images it would be scored on: its accuracy on real images is "
                 "not measured (nan)", split)
        return float("nan")
    acc = evaluate(judge, data.test_x, data.test_y, device)[0]
    log.info("metrics: judge accuracy on real %s images %.4f", split, acc)
    return acc


def through_vae(cfg: StudyConfig, images: torch.Tensor, device: str = "cpu", vae=None) -> torch.Tensor:
    """uint8 NCHW images encoded and decoded by the backbone's VAE (or `vae`; its posterior mode) at
    backbone.resolution, and read back at the data resolution and channels as the synthetic sets are: what the
    generator's bottleneck keeps."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from mvc.components import reconstruct

    if vae is None:
        kw = {"revision": cfg.backbone.revision} if cfg.backbone.kind == "pretrained" and cfg.backbone.revision else {}
        vae = AutoencoderKL.from_pretrained(backbone_source(cfg), subfolder="vae", **kw).to(device).eval()
    x = images_to_tensor(images.permute(0, 2, 3, 1).numpy(), cfg.backbone.resolution)
    back = tensor_to_images(reconstruct(vae, x))
    return to_chw(np.stack([to_array(Image.fromarray(im), cfg.data.resolution, cfg.data.channels) for im in back]))


def judge_accuracy_through_vae(cfg: StudyConfig, judge: nn.Module, data: ClassificationData,
                               device: str = "cpu") -> float:
    """The judge's accuracy on its real test images after the generator's bottleneck (`through_vae`): the label
    fidelity a generator drawing the real images exactly would reach (what the bottleneck keeps); nan where the judge's
    accuracy on real images is not measured (`judge_accuracy`)."""
    if cfg.metrics.judge_scored_on in cfg.metrics.judge_splits:
        return float("nan")
    acc = evaluate(judge, through_vae(cfg, data.test_x, device), data.test_y, device)[0]
    log.info("metrics: judge accuracy on real %s images through the VAE %.4f", cfg.metrics.judge_scored_on, acc)
    return acc
