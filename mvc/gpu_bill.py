"""The GPU bill of a study: what each stage costs on one H100/H200-class GPU, counted from what the params make it
do (images generated per set and replicate, fine-tuning steps per replicate, classifier steps per method and seed).

Fine-tuning and generation use throughput MEASURED on an H200 with SD-1.5-shaped models
(`benchmarks/gpu_sd15_h200.json`); captioning, image metrics and the classifier are ESTIMATES from FLOP counts at an
assumed 20% of the bf16 peak, with a floor of 4 ms per classifier step, and leave out the per-image augmentation on
the CPU and the synthetic sampler, which may bound the classifier's throughput. `mvc check` prints it;
`benchmarks/gpu_hours.py` writes it for every paper profile."""

from __future__ import annotations

from mvc.config import StudyConfig

# measured on an H200 (benchmarks/gpu_sd15_h200.json, torch 2.11.0+cu130)
FINETUNE_SAMPLES_PER_S = 21.362  # MVC fine-tuning, batch 4, gradient checkpointing, bf16, 512 px
MVC_IMAGES_PER_S = 5.556  # the kit's MVC sampler, bf16, compiled, 512 px, 30 steps (three passes per step)
PEAK = 989e12  # H100/H200 SXM dense bf16, FLOP/s
MFU = 0.20  # assumed for the estimated rows
BLIP2_FLOP = 2 * 1.0e9 * 257 + 2 * 2.7e9 * 62  # ViT-g over 257 tokens + OPT-2.7b over 32 queries + 30 new tokens
INCEPTION_FLOP = 5.7e9  # one FID Inception forward at 299 px
CLASSIFIER_FLOP_224 = {"resnet18": 1.82e9, "resnet50": 4.1e9}  # one forward at 224 px (ImageNet stem)
CIFAR_STEM = 16  # the small-image stem (stride 1, no max-pool) keeps 4x4 times the ImageNet stem's pixels
# (classes, training images) of the paper datasets, for a bill before the data is read
DATASET_SIZES = {"cifar10": (10, 50_000), "cifar100": (100, 50_000), "tiny_imagenet": (200, 100_000),
                 "caltech101": (101, 6_074), "brain_tumor_mri": (4, 5_712)}


def labelled_images(cfg: StudyConfig, classes: int, train_images: int) -> int:
    """shots x classes, or (full data) every training image not held out for validation."""
    if cfg.data.max_shots is not None:
        return classes * cfg.data.max_shots
    return train_images - classes * cfg.data.val_per_class


def gpu_bill(cfg: StudyConfig, classes: int | None = None, train_images: int | None = None) -> list[dict]:
    """[{stage, how ('measured rate' or 'estimate'), s}] for the study as its params say; the dataset's size from
    `DATASET_SIZES` unless given. Empty for a dataset of unknown size."""
    if classes is None:
        if cfg.data.dataset not in DATASET_SIZES:
            return []
        classes, train_images = DATASET_SIZES[cfg.data.dataset]
    n = labelled_images(cfg, classes, train_images)
    ft, g, c, reps = cfg.finetune, cfg.generate, cfg.classify, cfg.replicates
    scale = (cfg.backbone.resolution / 512) ** 2  # cost per image scales with the latent's pixels
    mvc_images = n * g.images_per_source * len(g.modes)
    # the baselines' sets (sd_naive, sd_img2img, ...), two passes per step where MVC's sampler runs three
    other_images = n * g.images_per_source * len([s for s in g.sets if not s.startswith("oracle")])
    samples = ft.batch_size * ft.gradient_accumulation_steps
    flop_224 = CLASSIFIER_FLOP_224.get(c.backbone.removeprefix("timm:"), CLASSIFIER_FLOP_224["resnet50"])
    side, stem = (c.input_size, 1) if c.pretrained else (cfg.data.resolution, CIFAR_STEM)
    per_step = max(0.004, 3 * flop_224 * (side / 224) ** 2 * stem * c.batch_size / (MFU * PEAK))
    runs, steps = len(c.methods) * len(c.seeds), c.steps_for(n)
    return [
        {"stage": "caption (BLIP-2, fp16)", "how": "estimate", "s": n * BLIP2_FLOP / (MFU * PEAK)},
        {"stage": f"finetune ({reps} x {ft.steps} steps x {samples} samples)", "how": "measured rate",
         "s": reps * ft.steps * samples / FINETUNE_SAMPLES_PER_S * scale},
        {"stage": f"generate ({reps} x ({mvc_images:,} MVC + {other_images:,} baseline images))",
         "how": "measured rate", "s": reps * (mvc_images + other_images * 2 / 3) / MVC_IMAGES_PER_S * scale},
        {"stage": "metrics (Inception features)", "how": "estimate",
         "s": reps * (mvc_images + other_images + 2 * n) * INCEPTION_FLOP / (MFU * PEAK)},
        {"stage": f"classify ({runs} runs x {steps:,} steps, {c.backbone}{' ImageNet' if c.pretrained else ''} at "
                  f"{side} px)", "how": "estimate", "s": runs * steps * per_step},
    ]
