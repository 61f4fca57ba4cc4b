"""What a study will need before it starts: a rough peak-memory estimate of the surrogate's training on a CPU,
checked against the machine's memory by `mvc check` and before the training stages, so that a setting that
cannot fit (the surrogate at 512 px, say) gets a clear error instead of a kernel killed for memory."""

from __future__ import annotations

import psutil

from mvc.config import StudyConfig

BASE_GB = 1.5  # torch, diffusers and transformers imported, a notebook kernel running (measured: 1.0-1.9 GB)
_BYTES = 4  # float32
_LIVE = 3  # activations kept for the backward pass, their gradients, and temporaries, per activation


def _activations(batch: int, side: int, channels: list[int], tensors_per_level: int) -> float:
    """Bytes of the activations of a conv net over `side`-pixel inputs that halves the side at each level."""
    return sum(batch * c * (side / 2**i) ** 2 * tensors_per_level for i, c in enumerate(channels)) * _BYTES * _LIVE


def surrogate_memory_gb(cfg: StudyConfig, stage: str | None = None) -> dict[str, float]:
    """Peak memory (GB) of the surrogate's VAE and UNet training steps (`backbone`) and of fine-tuning
    (`finetune`) on a CPU; both when `stage` is None."""
    s, res = cfg.backbone.surrogate, cfg.backbone.resolution
    latent = res / 2 ** (len(s.vae_channels) - 1)
    out = {}
    if stage in (None, "backbone"):
        out["backbone: VAE"] = BASE_GB + _activations(s.vae_batch_size, res, s.vae_channels, 14) / 2**30
        out["backbone: UNet"] = BASE_GB + _activations(s.unet_batch_size, latent, s.unet_channels, 24) / 2**30
    if stage in (None, "finetune"):
        out["finetune"] = BASE_GB + _activations(cfg.finetune.batch_size, latent, s.unet_channels, 24) / 2**30
    return out


def check_memory(cfg: StudyConfig, stage: str | None = None, available_gb: float | None = None,
                 device: str | None = None) -> dict[str, float]:
    """The estimate, or a ValueError naming the part that will not fit and the settings that lower it: the
    surrogate's training on a CPU (below), or a pretrained backbone's stages on their device (`mvc.memory`,
    against `available_gb` or the card present)."""
    if cfg.backbone.kind != "surrogate":
        from mvc.memory import check_fits

        return {p.stage: p.gib for p in check_fits(cfg, available_gb, device, stage)}
    total = available_gb if available_gb is not None else psutil.virtual_memory().total / 2**30
    need = surrogate_memory_gb(cfg, stage)
    worst = max(need, key=need.get)
    if need[worst] > 0.9 * total:
        raise ValueError(
            f"the surrogate's training needs about {need[worst]:.0f} GB ({worst}, estimated) and this machine has "
            f"{total:.0f} GB: lower backbone.resolution ({cfg.backbone.resolution}; the digits recipe uses 16), "
            f"backbone.surrogate.vae_batch_size / unet_batch_size or finetune.batch_size, or the channel widths")
    return need
