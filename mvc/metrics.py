"""Stage `metrics`: per synthetic set, distance to the real domain (FID, KID), label fidelity, diversity.

Fréchet distance and KID come from torchmetrics, on the feature extractor `metrics.feature_extractor` names:
- `classifier`: the penultimate layer of a small CNN (the "judge") trained on real images of the
  `metrics.judge_splits`; its accuracy on generated images is the label fidelity;
- `efficientnet_lite0`: ImageNet-pretrained EfficientNet-Lite0 (timm), weights from the registry package;
- `inception`: torchmetrics' Inception (its weights must be cached; they cannot be fetched offline).
Diversity is the mean pairwise feature distance within a class, averaged over classes.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvc.artifacts import load_images, load_splits, load_synthetic, set_mode, synthetic_set_names
from mvc.classifiers import ClassificationData, RunSpec, evaluate, train_classifier
from mvc.config import StudyConfig
from mvc.image_measures import FeatureModule, diversity, efficientnet_lite0_features, fid_kid
from mvc.imaging import to_chw
from mvc.io import write_csv
from mvc.runtime import seed_everything
from mvc.state import stage

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["synthetic_set", "mode", "images", "fid", "kid_mean", "kid_std", "label_fidelity", "diversity",
                  "feature_extractor"]


def train_judge(cfg: StudyConfig, device: str = "cpu"):
    """The small CNN trained on real images of the judge splits (crop augmentation only)."""
    splits, images = load_splits(cfg), load_images(cfg)
    rows = splits[splits["split"].isin(cfg.metrics.judge_splits)]
    ref = splits[splits["split"] == cfg.metrics.reference_split]
    data = ClassificationData(to_chw(images[rows["image_id"].to_numpy()]), torch.tensor(rows["label"].to_numpy()),
                              to_chw(images[ref["image_id"].to_numpy()]), torch.tensor(ref["label"].to_numpy()),
                              int(splits["label"].max()) + 1)
    c = cfg.classify.model_copy(update={"steps": cfg.metrics.judge_steps, "backbone": "small_cnn",
                                        "pretrained": False, "small_cnn_width": 32})
    return train_classifier(data, RunSpec("none", cfg.seed), c, cfg.data.resolution, device), data


def feature_extractor(cfg: StudyConfig, judge: nn.Module) -> FeatureModule:
    """The features FID, KID and diversity are computed on (`metrics.feature_extractor`)."""
    name = cfg.metrics.feature_extractor
    if name == "classifier":
        return FeatureModule(judge.features)
    if name == "efficientnet_lite0":
        return efficientnet_lite0_features()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return FeatureModule(NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]), resize=299,
                             mean=(0.0,) * 3, std=(1 / 255,) * 3)
    except (ImportError, ModuleNotFoundError, OSError, RuntimeError) as err:
        raise RuntimeError(f"metrics.feature_extractor: inception needs torch-fidelity and its cached weights ({err}); "
                           "use classifier or efficientnet_lite0 offline") from err


@stage("metrics")
def image_metrics(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """One row per synthetic set (and the real training images as a reference) in `image_metrics.csv`."""
    paths = cfg.paths
    seed_everything(cfg.seed)
    judge, judge_data = train_judge(cfg)
    features = feature_extractor(cfg, judge)
    real = judge_data.test_x[: cfg.metrics.max_images]
    splits, images = load_splits(cfg), load_images(cfg)
    train = splits[splits["split"] == "train"]
    sets = {"real_train": (to_chw(images[train["image_id"].to_numpy()]), train["label"].to_numpy(), "real")}
    for name in synthetic_set_names(cfg.generate):
        imgs, manifest = load_synthetic(cfg, name)
        sets[name] = (to_chw(imgs), manifest["label"].to_numpy(), "naive" if name == "naive" else set_mode(cfg.generate, name))
    rows = []
    judge_acc = evaluate(judge, judge_data.test_x, judge_data.test_y)[0]
    for name, (x, y, mode) in sets.items():
        x, y = x[: cfg.metrics.max_images], y[: cfg.metrics.max_images]
        fid, kid_m, kid_s = fid_kid(features, real, x, cfg.metrics.kid_subset_size, cfg.data.resolution)
        rows.append({"synthetic_set": name, "mode": mode, "images": len(x), "fid": fid, "kid_mean": kid_m, "kid_std": kid_s,
                     "label_fidelity": evaluate(judge, x, torch.tensor(np.array(y)))[0], "diversity": diversity(features, x, y),
                     "feature_extractor": cfg.metrics.feature_extractor})
        log.info("metrics %s: %s", name, rows[-1])
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    write_csv(paths.image_metrics, frame)
    return {"judge_accuracy_on_real": judge_acc}
