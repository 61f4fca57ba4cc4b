"""The GPU bill of a study: what each stage costs on one H100/H200-class GPU, counted from what the params make it
do (images generated per set and replicate, each set's M and SDEdit strength; fine-tuning steps of every fine-tuned
model per replicate, DA-Fusion's textual inversion per class; classifier steps per method and seed).

Fine-tuning and generation use throughput MEASURED on an H200 with SD-1.5-shaped models
(`benchmarks/gpu_sd15_h200.json`); captioning, image metrics and the classifier's network are ESTIMATES from FLOP
counts at an assumed 20% of the bf16 peak. A classifier step takes at least 4 ms, and at least the host-side work of
its batch (per-image augmentation and synthetic replacement, MEASURED on one CPU thread:
`benchmarks/classifier_host_cost.json`), which runs in Python beside the network. `mvc check` prints it;
`benchmarks/gpu_hours.py` writes it for every paper profile."""

from __future__ import annotations

from mvc.config import StudyConfig
from mvc.registry import MODELS, models_of_sets, set_images_per_source, set_spec, synthetic_set_names

# measured on an H200 (benchmarks/gpu_sd15_h200.json, torch 2.11.0+cu130)
FINETUNE_SAMPLES_PER_S = 21.362  # MVC fine-tuning, batch 4, gradient checkpointing, bf16, 512 px
MVC_IMAGES_PER_S = 5.556  # the kit's MVC sampler, bf16, compiled, 512 px, 30 steps (three passes per step)
PEAK = 989e12  # H100/H200 SXM dense bf16, FLOP/s
MFU = 0.20  # assumed for the estimated rows
BLIP2_FLOP = 2 * 1.0e9 * 257 + 2 * 2.7e9 * 62  # ViT-g over 257 tokens + OPT-2.7b over 32 queries + 30 new tokens
INCEPTION_FLOP = 5.7e9  # one FID Inception forward at 299 px
CLASSIFIER_FLOP_224 = {"resnet18": 1.82e9, "resnet50": 4.1e9}  # one forward at 224 px (ImageNet stem)
CIFAR_STEM = 16  # the small-image stem (stride 1, no max-pool) keeps 4x4 times the ImageNet stem's pixels
# the classifier loop's host-side work per training image (per-image augmentation, synthetic replacement), slowest
# method of params/cifar10.yaml, one CPU thread, MEASURED at each data resolution
# (benchmarks/classifier_host_cost.json); a GPU host core is taken to be as fast as that one
HOST_MS_PER_IMAGE = {32: 0.215, 64: 0.239, 128: 0.396}
# (classes, training images) of the paper datasets, for a bill before the data is read
DATASET_SIZES = {"cifar10": (10, 50_000), "cifar100": (100, 50_000), "tiny_imagenet": (200, 100_000),
                 "caltech101": (101, 6_074), "brain_tumor_mri": (4, 5_712)}


def labelled_images(cfg: StudyConfig, classes: int, train_images: int) -> int:
    """shots x classes, or (full data) every training image not held out for validation."""
    if cfg.data.max_shots is not None:
        return classes * cfg.data.max_shots
    return train_images - classes * cfg.data.val_per_class


def _mean_strength(sampler, g) -> float:
    """The share of the sampling steps an image of `sampler` denoises: its t0 values' mean (1 without img2img)."""
    if sampler.strengths is None:
        return 1.0
    t0 = sampler.strengths(g)
    return sum(t0) / len(t0)


def gpu_bill(cfg: StudyConfig, classes: int | None = None, train_images: int | None = None) -> list[dict]:
    """[{stage, how ('measured rate' or 'estimate'), s}] for the study as its params say; the dataset's size from
    `DATASET_SIZES` unless given. Empty for a dataset of unknown size."""
    if classes is None:
        if cfg.data.dataset not in DATASET_SIZES:
            return []
        classes, train_images = DATASET_SIZES[cfg.data.dataset]
    n = labelled_images(cfg, classes, train_images)
    ft, g, c, ti, reps = cfg.finetune, cfg.generate, cfg.classify, cfg.textual_inversion, cfg.replicates
    scale = (cfg.backbone.resolution / 512) ** 2  # cost per image scales with the latent's pixels
    sets = synthetic_set_names(g)
    mvc_images = sum(n * set_images_per_source(g, s) for s in sets if set_spec(s)[0].draws.image_conditioned)
    # the baselines' sets: two UNet passes per step where MVC's sampler runs three; an SDEdit set denoises only its
    # t0's share of the steps (DA-Fusion: the mean of its t0 values); the oracles' real images cost nothing
    other = {s: n * set_images_per_source(g, s) for s in sets
             if not set_spec(s)[0].draws.image_conditioned and not set_spec(s)[0].draws.pool}
    share = {s: _mean_strength(set_spec(s)[0].draws, g) for s in other}
    other_images, other_passes = sum(other.values()), sum(other[s] * 2 / 3 * share[s] for s in other)
    unet_models = [m for m in models_of_sets(sets) if m != "backbone" and MODELS[m].trains == "unet"]
    token_models = [m for m in models_of_sets(sets) if m != "backbone" and MODELS[m].trains == "tokens"]
    samples = ft.batch_size * ft.gradient_accumulation_steps
    # textual inversion: a forward and backward pass of the frozen UNet per sample, counted at fine-tuning's rate
    token_samples = len(token_models) * classes * ti.steps * ti.batch_size
    finetune_what = f"{ft.steps} steps x {samples} samples for {', '.join(unet_models)}"
    if token_models:
        finetune_what += f"; {classes} classes x {ti.steps} steps x {ti.batch_size} for {', '.join(token_models)}"
    flop_224 = CLASSIFIER_FLOP_224.get(c.backbone.removeprefix("timm:"), CLASSIFIER_FLOP_224["resnet50"])
    side, stem = (c.input_size, 1) if c.pretrained else (cfg.data.resolution, CIFAR_STEM)
    host = HOST_MS_PER_IMAGE[min((r for r in HOST_MS_PER_IMAGE if r >= cfg.data.resolution), default=128)]
    per_step = max(0.004, 3 * flop_224 * (side / 224) ** 2 * stem * c.batch_size / (MFU * PEAK),
                   c.batch_size * host / 1000)
    runs, steps = len(c.methods) * len(c.seeds), c.steps_for(n)
    return [
        {"stage": "caption (BLIP-2, fp16)", "how": "estimate", "s": n * BLIP2_FLOP / (MFU * PEAK)},
        {"stage": f"finetune ({reps} x ({finetune_what}))", "how": "measured rate",
         "s": reps * (len(unet_models) * ft.steps * samples + token_samples) / FINETUNE_SAMPLES_PER_S * scale},
        {"stage": f"generate ({reps} x ({mvc_images:,} MVC + {other_images:,} baseline images))",
         "how": "measured rate", "s": reps * (mvc_images + other_passes) / MVC_IMAGES_PER_S * scale},
        {"stage": "metrics (Inception features)", "how": "estimate",
         "s": reps * (mvc_images + other_images + 2 * n) * INCEPTION_FLOP / (MFU * PEAK)},
        {"stage": f"classify ({runs} runs x {steps:,} steps, {c.backbone}{' ImageNet' if c.pretrained else ''} at "
                  f"{side} px)", "how": "estimate", "s": runs * steps * per_step},
    ]
