"""A memory model of the Stable Diffusion stages: the peak memory of captioning, the latent cache, one fine-tuning
step (weights, gradients, optimizer states, EMA) and one generation batch, for a profile as configured, on the
device it runs on. `mvc check PARAMS --gpu-memory GiB` prints it and refuses settings that cannot fit the card,
naming the setting to lower; the encoding batch of the latent cache is chosen from it.

Parameter bytes are exact (the models are built on the `meta` device from their configs: the profile's own when
cached, Stable Diffusion 1.5's otherwise). Activations are per-sample coefficients measured at 512 px with
SD-1.5-shaped models (`benchmarks/memory_calibration.py`, one process per measurement) and scale with the pixel
count and the bytes of the compute dtype; the real-size rehearsal (`scripts/rehearse_real_size.py`) checks every
prediction end to end (`benchmarks/real_size_rehearsal.md`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mvc.footprint import (
    BASE_HOST,
    CAPTION,
    CUDA_CONTEXT,
    DECODE,
    ENCODE,
    GIB,
    SAMPLE,
    SD15_UNET,
    SD15_VAE,
    TRAIN_CHECKPOINTED,
    TRAIN_FULL,
    encode_batch_size,
    scaled,
)
from mvc.registry import CAPTIONERS, set_spec, synthetic_set_names
from mvc.runtime import on_cpu

log = logging.getLogger(__name__)

@dataclass
class StagePrediction:
    """The predicted peak of one stage's unit of work, its parts (GiB), and the setting that lowers it."""

    stage: str
    gib: float
    parts: dict[str, float]
    lower: str

    def line(self) -> str:
        return f"{self.stage}: {self.gib:.1f} GiB ({self.parts_text()})"

    def parts_text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.parts.items() if v)


def _params(cls, config: dict) -> int:
    """The parameter count of a diffusers model class built from `config` on the meta device."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _config(cls, source: str, subfolder: str, fallback: dict) -> dict:
    """The profile's own model config when it can be read without the network (a local folder or the HF cache),
    else Stable Diffusion 1.5's."""
    from mvc.paths import resolve_path

    local = resolve_path(source)
    where = str(local) if local.exists() else source
    try:
        return dict(cls.load_config(where, subfolder=subfolder, local_files_only=True))
    except (OSError, ValueError):
        return dict(fallback)


@dataclass(frozen=True)
class Sizes:
    """What every stage's prediction reads: the device, the networks' parameter counts and widths relative to SD
    1.5's, the pixels relative to 512 x 512, the memory every process holds, and the labelled images there are."""

    cfg: Any
    device: str
    gpu: bool
    capacity: float  # GiB of the card (sets the VAE's batches)
    vae_cfg: dict
    unet_p: int
    vae_p: int
    text_p: int
    px: float
    vae_width: float
    unet_width: float
    base: float
    n: int


def _sizes(cfg, device: str, capacity: float) -> Sizes:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = _config(UNet2DConditionModel, cfg.backbone.model, "unet", SD15_UNET)
    vae_cfg = _config(AutoencoderKL, cfg.backbone.model, "vae", SD15_VAE)
    gpu = device != "cpu"
    return Sizes(cfg, device, gpu, capacity, vae_cfg,
                 unet_p=_params(UNet2DConditionModel, {**unet_cfg, "in_channels": 2 * unet_cfg.get("in_channels", 4)}),
                 vae_p=_params(AutoencoderKL, vae_cfg),
                 text_p=123_060_480,  # CLIP ViT-L/14's text tower; small beside the UNet
                 px=(cfg.backbone.resolution / 512) ** 2,
                 vae_width=vae_cfg.get("block_out_channels", [128])[0] / 128,
                 unet_width=unet_cfg.get("block_out_channels", [320])[0] / 320,
                 base=CUDA_CONTEXT if gpu else BASE_HOST,
                 n=labelled_images(cfg) or 10**9)  # batches cannot exceed the images there are


def _caption(z: Sizes) -> StagePrediction | None:
    cfg, g = z.cfg, GIB
    captioner = CAPTIONERS[cfg.caption.backend]
    if captioner.weights is None:  # only a model worth counting (BLIP-2); the attribute captioner is not
        return None
    weights = captioner.weights(cfg.caption) * (2 if z.gpu else 4) / g  # float16 on a GPU, float32 on a CPU
    act = scaled(CAPTION, min(cfg.caption.batch_size, z.n), 1.0, bytes_=2 if z.gpu else 4)
    return StagePrediction("caption", z.base + weights + act,
                           {f"{captioner.name} weights": weights, "activations": act}, "caption.batch_size")


def _latent_cache(z: Sizes) -> StagePrediction:
    g = GIB
    enc_batch = min(z.n, encode_batch_size(z.vae_cfg, z.cfg.backbone.resolution, z.capacity))
    enc = {"VAE weights": z.vae_p * 4 / g, "activations": scaled(ENCODE, enc_batch, z.px, z.vae_width)}
    if not z.gpu:
        enc["text encoder, UNet (host)"] = (z.text_p + z.unet_p) * 4 / g
    return StagePrediction("latent cache", z.base + sum(enc.values()), enc, "automatic (encoding batch)")


def _finetune_step(z: Sizes) -> StagePrediction:
    from mvc.runtime import effective_mixed_precision

    ft, g, unet_p = z.cfg.finetune, GIB, z.unet_p
    precision = effective_mixed_precision(ft.mixed_precision, "cuda" if z.gpu else z.device, field="memory model")
    half = precision in ("bf16", "fp16")
    micro = ft.batch_size  # one process's micro-batch (accumulation keeps it)
    train = {"UNet weights (fp32)": unet_p * 4 / g, "gradients": unet_p * 4 / g,
             "optimizer states": unet_p * (2 if ft.optimizer == "adamw8bit" else 8) / g}
    if ft.use_ema and (not ft.ema_offload or not z.gpu):
        train["EMA copy"] = unet_p * 4 / g
    if half and z.gpu:
        train["autocast weight copies"] = unet_p * 2 / g
    coeff = TRAIN_CHECKPOINTED if ft.gradient_checkpointing else TRAIN_FULL
    train["activations"] = scaled(coeff, micro, z.px, z.unet_width, 2 if half else 4)
    if not z.gpu:
        train["VAE, text encoder (host)"] = (z.vae_p + z.text_p) * 4 / g
    lower = "finetune.batch_size (with gradient_accumulation_steps for the same total)" + \
        ("" if ft.gradient_checkpointing else ", finetune.gradient_checkpointing: true") + \
        ("" if ft.optimizer == "adamw8bit" else ", finetune.optimizer: adamw8bit") + \
        (", finetune.ema_offload: true" if ft.use_ema and not ft.ema_offload else "")
    return StagePrediction("finetune step", z.base + sum(train.values()), train, lower)


def _token_step(z: Sizes) -> StagePrediction | None:
    """One textual-inversion step (DA-Fusion's tokens, `mvc.textual_inversion`): the frozen UNet's weights and its
    activations kept for the backward pass to the text (no checkpointing), the text encoder with its embedding
    matrix's gradient and AdamW states, the VAE that encodes the class's images; None where no set needs tokens."""
    from mvc.registry import MODELS, models_of_sets
    from mvc.runtime import effective_mixed_precision

    tokens = [m for m in models_of_sets(synthetic_set_names(z.cfg.generate)) if m in MODELS
              and MODELS[m].trains == "tokens"]
    if not tokens:
        return None
    ti, g = z.cfg.textual_inversion, GIB
    precision = effective_mixed_precision(ti.mixed_precision, "cuda" if z.gpu else "cpu",
                                          "textual_inversion.mixed_precision")
    half = precision in ("bf16", "fp16")
    embedding = 49_408 * 768  # CLIP ViT-L/14's token embedding matrix, all of it under AdamW
    per_class = min(z.n, z.cfg.data.max_shots or z.n)
    encode = scaled(ENCODE, min(per_class, encode_batch_size(z.vae_cfg, z.cfg.backbone.resolution, z.capacity)),
                    z.px, z.vae_width)
    step = {"UNet weights": z.unet_p * (2 if half and z.gpu else 4) / g, "VAE weights (fp32)": z.vae_p * 4 / g,
            "text encoder, its embedding's gradient and AdamW states": (z.text_p + 3 * embedding) * 4 / g,
            # a class's images are encoded once, before its steps: the larger of the two is the peak
            "activations (encoding a class, or a step)":
                max(encode, scaled(TRAIN_FULL, ti.batch_size, z.px, z.unet_width, 2 if half else 4))}
    if not z.gpu:  # writing the model folder copies the UNet's tensors once more in host memory (fitted to the
        step["model folder write (host)"] = z.unet_p * 4 / g  # real-size rehearsal's peak, 2026-12-07)
    return StagePrediction("finetune_dafusion step", z.base + sum(step.values()), step, "textual_inversion.batch_size")


def _generate_batch(z: Sizes) -> StagePrediction:
    gen, g = z.cfg.generate, GIB
    unet_bytes = 2 if z.gpu else 4  # bf16 weights on a GPU, float32 on a CPU
    n_unets = 1  # the models of a unit's sets are loaded one at a time (`mvc.generate.generate_unit`)
    dec_batch = encode_batch_size(z.vae_cfg, z.cfg.backbone.resolution, z.capacity, DECODE, cap=4096)
    images = z.n * gen.images_per_source
    sample = {"UNet weights": n_unets * z.unet_p * unet_bytes / g, "VAE weights (fp32)": z.vae_p * 4 / g,
              "sampling activations": scaled(SAMPLE, min(gen.batch_size, images), z.px, z.unet_width, unet_bytes),
              "decoding": scaled(DECODE, min(gen.batch_size, dec_batch, images), z.px, z.vae_width)}
    if any(set_spec(s)[0].draws.img2img for s in synthetic_set_names(gen)):
        sample["text encoder"] = z.text_p * 4 / g
    if not z.gpu:  # each model's folder brings its text encoder and VAE into host memory, used or not
        sample["idle text encoders, VAEs (host)"] = (n_unets * z.text_p + (n_unets - 1) * z.vae_p) * 4 / g
    return StagePrediction("generate batch", z.base + sum(sample.values()), sample, "generate.batch_size")


def predict(cfg, device: str = "cuda", capacity: float = 16.0) -> list[StagePrediction]:
    """Peak memory (GiB) of each Stable Diffusion stage of `cfg` on `device` with `capacity` GiB (which sets the
    VAE's batches): device memory on a GPU (`max_memory_allocated`, plus the CUDA context), host memory of the
    stage's process on a CPU."""
    if cfg.backbone.kind != "pretrained":
        return []
    z = _sizes(cfg, device, capacity)
    return [p for p in (_caption(z), _latent_cache(z), _finetune_step(z), _token_step(z), _generate_batch(z))
            if p is not None]


def labelled_images(cfg) -> int | None:
    """How many labelled training images the study has: counted in `splits.csv` once the data stage ran, else
    `data.shots` x the classes named in `data.classes`; None when unknown (batches are then taken as full)."""
    import pandas as pd

    if cfg.paths.splits.exists():
        return int((pd.read_csv(cfg.paths.splits, usecols=["split"])["split"] == "train").sum())
    if cfg.data.classes and cfg.data.max_shots:
        return len(cfg.data.classes) * cfg.data.max_shots
    return None


def capacity_gib(device: str = "cuda") -> float:
    """The memory of the card present (total), or of this machine on a CPU."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        import os

        from mvc.runtime import GPU_MEMORY_ENV

        total = torch.cuda.get_device_properties(0).total_memory / GIB
        return min(total, float(os.environ.get(GPU_MEMORY_ENV) or total))
    import psutil

    return psutil.virtual_memory().total / GIB


class DoesNotFit(ValueError):
    """A stage whose predicted peak exceeds the memory it will run in; the message names the setting to lower."""


STAGE_PARTS = {"caption": ["caption"], "finetune": ["latent cache", "finetune step"], "generate": ["generate batch"],
               "finetune_dafusion": ["finetune_dafusion step"]}


def check_fits(cfg, capacity: float | None = None, device: str | None = None,
               stage: str | None = None) -> list[StagePrediction]:
    """The predictions for `cfg` on `device` (the card present, else the CPU), or `DoesNotFit` naming the first
    stage (of `stage`'s units of work, or of all) that cannot fit `capacity` GiB (default: the card present, or this
    machine's memory) and the setting to lower."""

    device = device or ("cpu" if on_cpu(cfg.device) else "cuda")
    capacity = capacity if capacity is not None else capacity_gib(device)
    preds = [p for p in predict(cfg, device, capacity) if stage is None or p.stage in STAGE_PARTS.get(stage, [])]
    return refuse_what_cannot_fit(preds, capacity, device)


def refuse_what_cannot_fit(preds: list[StagePrediction], capacity: float, device: str) -> list[StagePrediction]:
    """`preds` unchanged, or `DoesNotFit` naming the first that exceeds 95% of `capacity` GiB and what to lower."""
    for p in preds:
        if p.gib > 0.95 * capacity:
            where = f"a {capacity:.0f} GiB card" if device != "cpu" else f"this machine's {capacity:.0f} GiB"
            raise DoesNotFit(f"{p.stage} needs about {p.gib:.1f} GiB ({p.parts_text()}; mvc/memory.py), more than "
                             f"{where}; lower {p.lower}")
    return preds
