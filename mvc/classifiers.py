"""Classifiers and their training: the backbones, the augmentation of every method (torchvision transforms v2),
synthetic replacement, one- and two-phase schedules, evaluation. Tensors in, models out; no files.

Every method trains the same backbone for the same number of optimizer steps. Augmentations apply per image
(`mixup`/`cutmix` per batch). For the synthetic methods, each real image of a batch is replaced by one of its
synthetic images with probability `p_synthetic`. `mvc_two_phase` spends the last `two_phase_fraction` of its steps
on real images only, at `two_phase_lr_scale` times the learning rate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvc.config import ClassifyConfig
from mvc.registry import METHODS
from mvc.runtime import adamw, effective_mixed_precision, seed_everything


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head, for small images (the digits profile's 16x16)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width),
                                      nn.MaxPool2d(2), block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ImageNetClassifier(nn.Module):
    """An ImageNet-pretrained body (its pooled features) with a new linear head, as the field's few-shot and
    full-data protocols use it: takes the kit's [-1, 1] images, resizes them to `size` (224 for ResNet-50) and
    normalizes them as ImageNet's were. `body`: efficientnet_lite0 (weights installed from the registry), a
    torchvision ResNet or a timm model, each without its classifier."""

    def __init__(self, body: nn.Module, num_features: int, num_classes: int, size: int) -> None:
        super().__init__()
        from mvc.image_measures import IMAGENET_MEAN, IMAGENET_STD

        self.body, self.size = body, size
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled body features of the kit's [-1, 1] images."""
        x = (x + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @property
    def features(self) -> nn.Module:
        """The features as a module (as small_cnn's `features`): what the image measures use when this is the judge."""
        return _Embedding(self)


def torchvision_imagenet_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of `name` from the torch hub cache, read once per process and cache folder: a
    grid of classifier runs would otherwise read the same file (ResNet-50: 98 MB) for every run. Callers copy them
    into their own model (`load_state_dict` copies), so the cached tensors are never trained."""
    return _read_torchvision_weights(name, torch.hub.get_dir())


@functools.lru_cache(maxsize=2)
def _read_torchvision_weights(name: str, hub_dir: str) -> dict[str, torch.Tensor]:
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False, check_hash=True)


def imagenet_body(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """The body of an ImageNet classifier without its head, and its feature width: `efficientnet_lite0`, a
    torchvision `resnet18`/`resnet50` (standard stem, weights from the torch hub cache) or `timm:<name>` (weights
    from the Hugging Face cache)."""
    if name == "efficientnet_lite0":
        from mvc.image_measures import efficientnet_lite0

        body = efficientnet_lite0(pretrained)
        return body, body.num_features
    if name in ("resnet18", "resnet50"):
        import torchvision

        if pretrained:  # built on the meta device, then given a copy of the weights: no random init to discard
            with torch.device("meta"):
                body = getattr(torchvision.models, name)(weights=None)
            weights = torchvision_imagenet_weights(name)
            body.load_state_dict({k: v.clone() for k, v in weights.items()}, assign=True)
        else:
            body = getattr(torchvision.models, name)(weights=None)
        width, body.fc = body.fc.in_features, nn.Identity()
        return body, width
    import timm

    body = timm.create_model(name.removeprefix("timm:"), pretrained=pretrained, num_classes=0)
    return body, body.num_features


class _Embedding(nn.Module):
    """A view of an ImageNetClassifier's `embed` as a module (the network is held outside the module tree)."""

    def __init__(self, network: ImageNetClassifier) -> None:
        super().__init__()
        self.__dict__["network"] = network  # not registered: a view, not a copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.embed(x)


def build_classifier(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                     width: int = 32, input_size: int = 64) -> nn.Module:
    """`small_cnn`; `efficientnet_lite0` (its ImageNet weights installed from the registry: offline); `resnet18` /
    `resnet50` (torchvision) or `timm:<name>`. With `pretrained` (or for efficientnet_lite0, always) an
    `ImageNetClassifier` at `input_size` pixels; from scratch, resnet18 has a small-image stem and the rest their
    own, at the data's resolution."""
    import torchvision

    known = name in ("small_cnn", "efficientnet_lite0", "resnet18", "resnet50") or name.startswith("timm:")
    if not known:
        raise ValueError(f"classify.backbone: {name!r} is not one of small_cnn, resnet18, resnet50, "
                         f"efficientnet_lite0, timm:<name>")
    if name == "small_cnn":
        if pretrained:
            raise ValueError("classify.pretrained: small_cnn has no pretrained weights; use resnet18/50, "
                             "efficientnet_lite0 or timm:<name>")
        return SmallCNN(num_classes, in_channels, width)
    try:
        if pretrained or name == "efficientnet_lite0":
            return ImageNetClassifier(*imagenet_body(name, pretrained), num_classes, input_size)
    except (OSError, RuntimeError) as err:
        from mvc.weights import fetch_hint

        raise RuntimeError(f"classify.pretrained: ImageNet weights for {name} are not available offline ({err}); "
                           f"{fetch_hint(name)}, or set classify.pretrained: false") from err
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes, in_chans=in_channels)
    model = getattr(torchvision.models, name)(weights=None)
    if name == "resnet18":  # CIFAR-style stem: 3x3 stride-1 conv, no max-pool
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def head_of(model: nn.Module) -> nn.Module:
    """The final linear layer: what a linear probe trains."""
    return model.fc if hasattr(model, "fc") else model.head  # torchvision's own head, or ours


# ----------------------------------------------------------------------------------------------------------
# Transforms


def base_transform(c: ClassifyConfig, resolution: int) -> list:
    """Crop (with padding) and, where the profile allows it, horizontal flip: what every method gets."""
    from torchvision.transforms import v2  # deferred: torchvision's import takes 1.6 s (notebooks that train none)
    out = [v2.RandomCrop(resolution, padding=c.crop_padding)] if c.crop_padding > 0 else []
    return out + ([v2.RandomHorizontalFlip()] if c.hflip else [])


def method_transform(method: str, c: ClassifyConfig, resolution: int):
    """The per-image transform of a method (uint8 CHW tensor in, uint8 CHW tensor out): its own transforms
    (`mvc.registry.Method.transforms`), then the crop and flip every method gets (a v2.Compose)."""
    from torchvision.transforms import v2
    return v2.Compose(METHODS[method].transforms(c) + base_transform(c, resolution) or [v2.Identity()])


def crop_and_flip_batch(x: torch.Tensor, c: ClassifyConfig, resolution: int) -> torch.Tensor:
    """`base_transform` of a whole uint8 NCHW batch in one indexing op: each image its own crop offset (zero
    padding of `c.crop_padding`, as v2.RandomCrop's) and its own flip, drawn from torch's generator. The same
    distribution as the per-image transforms, without 64 transform calls per step (a quarter of a small_cnn step on
    one CPU thread: benchmarks/digits_budget.md)."""
    n, _, h, w = x.shape
    if c.crop_padding > 0:
        pad = c.crop_padding
        padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
        dy = torch.randint(0, h + 2 * pad - resolution + 1, (n,))
        dx = torch.randint(0, w + 2 * pad - resolution + 1, (n,))
        span = torch.arange(resolution)
        rows, cols = (dy[:, None] + span)[:, :, None], (dx[:, None] + span)[:, None, :]
        x = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()
    if c.hflip:
        x = torch.where((torch.rand(n) < 0.5)[:, None, None, None], x.flip(-1), x)
    return x


def batch_transform(method: str, c: ClassifyConfig, num_classes: int):
    """The method's transform of whole batches (MixUp, CutMix), or None."""
    batch = METHODS[method].batch
    return batch(c, num_classes) if batch is not None else None


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class ClassificationData:
    """Real training and test images (uint8, NCHW) with labels, and the synthetic sets a grid uses."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    synthetic: dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # synthetic set -> (uint8 images, source row in train_x, index j)
    source: tuple[torch.Tensor, torch.Tensor] | None = None  # the labelled source domain (uint8 NCHW, labels)


PSEUDO_LABELLED = "pseudo_labelled_pool"  # the key of the pseudo-labelled pool in ClassificationData.synthetic


def replacement_sets(spec: RunSpec) -> list[str]:
    """What may replace a real image of `spec`'s batches: its synthetic sets, and the pseudo-labelled pool."""
    return list(spec.synthetic_sets) + ([PSEUDO_LABELLED] if METHODS[spec.method].pseudo_labels else [])


class SyntheticSampler:
    """Replaces real images of a batch by synthetic ones, by `combine` (`classify.combine`): `own`, one of the image's
    own synthetics with probability `p`; `class`, any synthetic image of its class with probability `p`; `concat`,
    the real and synthetic sets pooled (a real image's slot goes to a synthetic image of its class with the
    synthetic share of that class's pool, whatever `p`); `synthetic_only`, one of its own synthetics always."""

    def __init__(self, data: ClassificationData, sets: list[str], max_per_source: int | None = None,
                 combine: str = "own"):
        parts = [data.synthetic[g] for g in sets]
        self.images = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, dtype=torch.uint8)
        sources = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, int)
        index = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, int)
        keep = index < max_per_source if max_per_source else np.ones(len(index), bool)
        self.share = [1.0] * len(data.train_y) if combine == "synthetic_only" else None  # per row, instead of p
        if combine in ("class", "concat"):
            labels = data.train_y.numpy()
            of_class = {c: np.flatnonzero(keep & (labels[sources] == c)) for c in np.unique(labels)}
            self.of_source = [of_class[c] for c in labels]
            if combine == "concat":
                real = {c: int((labels == c).sum()) for c in of_class}
                self.share = [len(of_class[c]) / (len(of_class[c]) + real[c]) for c in labels]
        else:
            self.of_source = [np.flatnonzero(keep & (sources == s)) for s in range(len(data.train_y))]

    def __call__(self, rows: np.ndarray, p: float, rng: np.random.Generator, real: torch.Tensor):
        out, used = real.clone(), np.zeros(len(rows), bool)
        for i, r in enumerate(rows):
            cands = self.of_source[r]
            if len(cands) and rng.random() < (p if self.share is None else self.share[r]):
                out[i] = self.images[cands[rng.integers(len(cands))]]
                used[i] = True
        return out, used


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a method under a variant of the classify params (ablations)."""

    method: str
    seed: int
    variant: str = "main"
    synthetic_sets: tuple[str, ...] = ()
    p_synthetic: float = 0.5
    max_per_source: int | None = None
    shots: int | None = None  # the shots level of the unit it trains on (None: the study's one level, or all)
    replicate: int = 0  # the replicate of the generative pipeline it is paired with


def phase_schedule(method: str, c: ClassifyConfig) -> list[tuple[int, float, bool, bool]]:
    """[(steps, lr scale, synthetic allowed, on the source domain)] per phase; every method totals `c.steps` (set
    from `epochs` by `train_classifier` where the params count in epochs)."""
    synthetic = METHODS[method].draws_images(c)
    if METHODS[method].two_phase:  # phase 2: real images only, a fresh cosine schedule at a lower rate
        second = max(1, round(c.two_phase_fraction * c.steps))
        return [(c.steps - second, 1.0, synthetic, False), (second, c.two_phase_lr_scale, False, False)]
    if METHODS[method].source:  # phase 1: the labelled source domain; phase 2: the labelled images, a fresh schedule
        first = max(1, round(c.source_fraction * c.steps))
        return [(first, 1.0, False, True), (c.steps - first, 1.0, synthetic, False)]
    return [(c.steps, 1.0, synthetic, False)]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return (x.float() / 255 - 0.5) / 0.5


def lr_schedule(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One phase's schedule: cosine over its `steps`, after a linear warm-up of `warmup` of them (none: plain
    cosine, as before warm-up was a field)."""
    warmup = min(warmup, steps - 1)
    if warmup <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - warmup))
    return torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])


def train_classifier(data: ClassificationData, spec: RunSpec, c: ClassifyConfig, resolution: int,
                     device: str = "cpu", on_batch=None) -> nn.Module:
    """Train one classifier; `on_batch(phase, images, used_synthetic)` sees every batch (tests use it)."""
    seed_everything(spec.seed)
    rng = np.random.default_rng(spec.seed)
    if c.epochs is not None:
        c = c.model_copy(update={"steps": c.steps_for(len(data.train_y))})
    model = build_classifier(c.backbone, data.num_classes, data.train_x.shape[1], c.pretrained,
                             c.small_cnn_width, c.input_size).to(device)
    probe = c.train == "linear_probe"
    if probe:  # DA-Fusion's protocol: the pretrained body frozen, only the new head learns
        model.requires_grad_(False)
        head_of(model).requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    layout = torch.channels_last if c.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    bf16 = effective_mixed_precision(c.mixed_precision, device, "classify.mixed_precision") == "bf16"
    from torchvision.transforms import v2

    own = METHODS[spec.method].transforms(c)  # the method's per-image transforms; crop and flip act on the batch
    per_image = v2.Compose(own) if own else None
    per_batch = batch_transform(spec.method, c, data.num_classes)
    sets = replacement_sets(spec)
    sampler = SyntheticSampler(data, sets, spec.max_per_source, c.combine) if sets else None
    if c.optimizer == "sgd":
        opt = torch.optim.SGD(trained, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay)
    else:
        opt = adamw(trained, device, lr=c.lr, weight_decay=c.weight_decay)
    model.train()
    if probe:
        model.eval()  # the frozen body's batch norm keeps its ImageNet statistics
        head_of(model).train()
    for phase, (steps, lr_scale, synthetic_ok, on_source) in enumerate(phase_schedule(spec.method, c)):
        for group in opt.param_groups:
            group["lr"] = c.lr * lr_scale
        sched = lr_schedule(opt, steps, c.warmup_steps if phase == 0 else 0)
        if on_source and data.source is None:
            raise ValueError(f"method {spec.method} trains on the labelled source domain, which was not loaded")
        pool_x, pool_y = data.source if on_source else (data.train_x, data.train_y)
        for _ in range(steps):
            rows = rng.integers(0, len(pool_y), c.batch_size)
            x, y = pool_x[rows], pool_y[rows]
            used = np.zeros(len(rows), bool)
            if sampler is not None and synthetic_ok:
                x, used = sampler(rows, spec.p_synthetic, rng, x)
            if per_image is not None:
                x = torch.stack([per_image(img) for img in x])
            x = crop_and_flip_batch(x, c, resolution)
            if on_batch is not None:
                on_batch(phase, x, used)
            x = normalize(x)
            if per_batch is not None:
                x, y = per_batch(x, y)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x.to(device, memory_format=layout)), y.to(device),
                                       label_smoothing=c.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: str = "cpu", batch_size: int = 512) -> torch.Tensor:
    """The model's logits (on the CPU) of uint8 NCHW images, in batches."""
    return torch.cat([model(normalize(x[i: i + batch_size]).to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu",
             batch_size: int = 512) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (top-k with k = min(5, classes))."""
    logits = predict_logits(model, x, device, batch_size)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top[:, 0] == y).float().mean().item(), (top == y[:, None]).any(1).float().mean().item()


# ----------------------------------------------------------------------------------------------------------
# The grid
