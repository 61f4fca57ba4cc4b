"""The measured memory footprint of Stable Diffusion's parts: SD 1.5's hub configs (the fallback when a profile's
own are not cached), per-image activation coefficients measured at 512 px (`benchmarks/memory_calibration.py`), and
the VAE batch they allow. `mvc.memory` builds its per-stage predictions from these; `mvc.components` sizes its
encoding and decoding batches with `encode_batch_size`."""

from __future__ import annotations

GIB = 2**30

# The hub configs of stable-diffusion-v1-5/stable-diffusion-v1-5 (unet/, vae/, text_encoder/, scheduler/).
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER = {  # CLIP ViT-L/14's text tower
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
    "set_alpha_to_one": False, "trained_betas": None, "prediction_type": "epsilon",
}


def sd15_unet_config() -> dict:
    return dict(SD15_UNET)


def sd15_vae_config() -> dict:
    return dict(SD15_VAE)


# Activation coefficients, GiB at 512 px in float32 (host memory on a CPU, benchmarks/memory_calibration.json):
# a fixed part of the unit of work beside its weights, and a part per image in its batch.
ENCODE = (0.02, 0.64)  # VAE encoder, per image (SD 1.5's VAE)
DECODE = (0.31, 0.69)  # VAE decoder, per image
TRAIN_CHECKPOINTED = (0.24, 0.13)  # UNet forward + backward with gradient checkpointing, per sample
TRAIN_FULL = (0.24, 0.45)  # without checkpointing (every block's activations kept), per sample
SAMPLE = (0.45, 0.29)  # one guided UNet forward, per image (its three passes in one batch)
CAPTION = (0.5, 0.05)  # BLIP-2 generate(), per image
BASE_HOST = 1.05  # a process with torch, diffusers and transformers imported (measured 1.03-1.08 GiB)
CUDA_CONTEXT = 0.6  # the CUDA context and kernels, outside max_memory_allocated (typical for one process)


def scaled(coeff: tuple[float, float], batch: int, pixels: float, width: float = 1.0, bytes_: int = 4) -> float:
    fixed, per = coeff
    return (fixed + per * batch) * pixels * width * bytes_ / 4


def encode_batch_size(vae_config: dict, resolution: int, capacity_gib: float | None = None,
                      coeff: tuple[float, float] = ENCODE, cap: int = 64) -> int:
    """Images per VAE encoding (or decoding) batch whose activations stay within a quarter of `capacity_gib`
    (default 4 GiB: a quarter of a 16 GB card), at most `cap`: SD 1.5's VAE at 512 px takes about 0.64 GiB per
    image to encode and 1 GiB to decode, so batch 64 would need 40-64 GiB."""
    budget = (capacity_gib if capacity_gib is not None else 16.0) / 4
    per = scaled((0.0, coeff[1]), 1, (resolution / 512) ** 2, vae_config.get("block_out_channels", [128])[0] / 128)
    return int(max(1, min(cap, budget // max(per, 1e-9))))
