"""The diffusion backbone: Stable Diffusion from the hub or a folder, or the surrogate built from the same classes.

A backbone is the five parts a diffusers Stable Diffusion folder holds: `vae` (AutoencoderKL), `unet`
(UNet2DConditionModel), `text_encoder` (CLIPTextModel), `tokenizer` (CLIPTokenizer) and `scheduler`.
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mvc import state
from mvc.config import StudyConfig, SurrogateConfig
from mvc.io import write_csv
from mvc.paths import resolve_path

log = logging.getLogger(__name__)

SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


class ModelFolderError(FileNotFoundError):
    """A model folder that is missing, incomplete or unreadable; the message names what is wrong."""


def hub_error(model: str, field: str, err: Exception) -> Exception:
    """A clear error for a model that could not be loaded from a folder or the hub."""
    path = resolve_path(model)
    if path.exists() or model.startswith((".", "/", "~")):
        return ModelFolderError(f"{field}: could not load the model folder {path}: {err}. "
                                "Point it at a folder written by `save_pretrained`.")
    return ModelFolderError(
        f"{field}: '{model}' is not a local folder and could not be loaded from the Hugging Face Hub "
        f"(offline or not cached): {str(err).splitlines()[0]}. Fetch it on a connected machine with "
        f"`huggingface-cli download {model}` (it lands in the HF cache), then run with HF_HUB_OFFLINE=1, "
        f"or set {field} to a local folder.")


# ----------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Backbone:
    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object


def _check_folder(path: Path, needed: tuple[str, ...], field: str) -> None:
    if not path.is_dir():
        raise ModelFolderError(f"{field}: model folder {path} does not exist")
    missing = [s for s in needed if not (path / s).is_dir()]
    if missing:
        raise ModelFolderError(f"{field}: model folder {path} lacks {missing}; a diffusers Stable Diffusion folder "
                               f"has {list(SUBFOLDERS)} (write one with `pipeline.save_pretrained`)")


def load_backbone(source: str | Path, revision: str | None = None, field: str = "backbone.model",
                  dtype: torch.dtype = torch.float32) -> Backbone:
    """Load the five parts from a local diffusers folder or a hub id (cached, or online)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = resolve_path(source)
    where = str(local) if local.exists() or str(source).startswith((".", "/", "~")) else str(source)
    if where == str(local):
        _check_folder(local, SUBFOLDERS, field)
    kw = {"revision": revision} if revision and where != str(local) else {}
    try:
        return Backbone(
            vae=AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype, **kw),
            unet=UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dtype, **kw),
            text_encoder=CLIPTextModel.from_pretrained(where, subfolder="text_encoder", dtype=dtype, **kw),
            tokenizer=CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw),
            scheduler=DDPMScheduler.from_pretrained(where, subfolder="scheduler", **kw),
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise hub_error(str(source), field, err) from err


def backbone_source(cfg: StudyConfig) -> str:
    """Where the backbone lives: the study's surrogate folder, or the hub id / folder of the params."""
    return str(cfg.paths.backbone) if cfg.backbone.kind == "surrogate" else cfg.backbone.model


def text_components(cfg: StudyConfig):
    """(tokenizer, text encoder, source) of the backbone, without loading its UNet or VAE."""
    if cfg.backbone.kind == "surrogate":
        s = cfg.backbone.surrogate
        return clip_tokenizer(cfg.text.max_length), build_surrogate_text_encoder(s, cfg.text.max_length), "surrogate"
    from transformers import CLIPTextModel, CLIPTokenizer

    model, kw = cfg.backbone.model, ({"revision": cfg.backbone.revision} if cfg.backbone.revision else {})
    try:
        tok = CLIPTokenizer.from_pretrained(str(resolve_path(model)) if resolve_path(model).exists() else model,
                                            subfolder="tokenizer", **kw)
        enc = CLIPTextModel.from_pretrained(str(resolve_path(model)) if resolve_path(model).exists() else model,
                                            subfolder="text_encoder", **kw)
    except (OSError, ValueError) as err:
        raise hub_error(model, "backbone.model", err) from err
    return tok, enc, model


def widen_conv_in(unet: torch.nn.Module, factor: int = 2) -> torch.nn.Module:
    """Give `conv_in` `factor` times its input channels; the new weights are zero (InstructPix2Pix).

    With the extra channels at zero, or any input on them, the output at step 0 equals the original model's
    output on the first channels.
    """
    old = unet.conv_in
    c = old.in_channels
    new = torch.nn.Conv2d(c * factor, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :c] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=c * factor)
    return unet


# ----------------------------------------------------------------------------------------------------------
# The surrogate backbone


@lru_cache(maxsize=4)
def clip_tokenizer(max_length: int = 77):
    """CLIP's tokenizer, built offline from the BPE vocabulary that open_clip ships (identical token ids)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1: 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    del open_clip
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=max_length,
                         pad_token="<|endoftext|>")


def build_surrogate_text_encoder(s: SurrogateConfig, max_length: int = 77) -> torch.nn.Module:
    """A small CLIPTextModel with CLIP's vocabulary; frozen, seeded, so every build gives the same weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=s.text_hidden_size, intermediate_size=4 * s.text_hidden_size,
                            num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                            max_position_embeddings=max(max_length, 77), bos_token_id=49406, eos_token_id=49407,
                            pad_token_id=49407, projection_dim=s.text_hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = CLIPTextModel(config)
    return model.eval().requires_grad_(False)


def _groups(channels: list[int]) -> int:
    return int(np.gcd.reduce(channels + [8]))


def build_surrogate_vae(s: SurrogateConfig, resolution: int, channels: int = 3):
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    return AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(s.vae_channels),
                         layers_per_block=1, latent_channels=s.latent_channels, norm_num_groups=_groups(s.vae_channels),
                         sample_size=resolution, mid_block_add_attention=s.vae_mid_attention)


def build_surrogate_unet(s: SurrogateConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.unet_cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.unet_cross_attention))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=s.latent_channels, out_channels=s.latent_channels,
        block_out_channels=tuple(s.unet_channels), layers_per_block=s.unet_layers_per_block,
        down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if s.unet_mid_block else None,
        cross_attention_dim=s.text_hidden_size, attention_head_dim=s.attention_head_dim,
        norm_num_groups=_groups(s.unet_channels))


def noise_scheduler(s: SurrogateConfig):
    """DDPM training schedule as Stable Diffusion's: note `clip_sample=False` (the diffusers default clips
    the predicted clean latent to [-1, 1], which ruins latent sampling; see DESIGN.md)."""
    from diffusers import DDPMScheduler

    beta_end = 0.012 if s.beta_schedule == "scaled_linear" else 0.02
    return DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=0.00085, beta_end=beta_end,
                         beta_schedule=s.beta_schedule, clip_sample=False, prediction_type=s.prediction_type,
                         steps_offset=1)


def images_to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, R, R) in [-1, 1], grey expanded to RGB, resized bicubically."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x.contiguous()


def diffusion_images(cfg: StudyConfig, image_ids) -> torch.Tensor:
    """The study's prepared images `image_ids` as the diffusion model sees them: (N, 3, R, R) in [-1, 1]."""
    from mvc.data import load_images

    return images_to_tensor(np.asarray(load_images(cfg)[np.asarray(image_ids)]), cfg.backbone.resolution)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def diffusion_loss(unet, scheduler, latents: torch.Tensor, text: torch.Tensor, cond: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`|| target - eps_theta(z_t (+) cond, t, text) ||^2`, target eps or v as the scheduler predicts."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                      device=latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    inp = noisy if cond is None else torch.cat([noisy, cond], dim=1)
    pred = unet(inp, t, encoder_hidden_states=text).sample
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    return F.mse_loss(pred.float(), target.float())


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=gen)


def pretrain_surrogate(cfg: StudyConfig, show_progress: bool = True) -> Path:
    """Train the surrogate's VAE and UNet on the unlabelled pool with class-free captions; save a diffusers
    folder that `StableDiffusionPipeline.from_pretrained` loads. Returns the folder."""
    from diffusers import StableDiffusionPipeline
    from diffusers.optimization import get_scheduler

    from mvc.captioning import load_captions
    from mvc.data import load_splits
    from mvc.io import atomic_dir
    from mvc.text import EMPTY_PROMPT, TextEncoder

    s, res = cfg.backbone.surrogate, cfg.backbone.resolution
    splits, captions = load_splits(cfg), load_captions(cfg)
    pool = splits[splits["split"] == "pool"]
    if pool.empty:
        raise ValueError("backbone.kind: surrogate needs an unlabelled pool to pretrain on, but the pool split is "
                         "empty; raise data.pool_per_class (or lower data.shots), or use backbone.kind: pretrained")
    pool_caps = captions.set_index("image_id").reindex(pool["image_id"])["caption"]
    if pool_caps.isna().any():
        raise ValueError("captions.csv lacks captions of pool images: add 'pool' to caption.splits")
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    x = diffusion_images(cfg, pool["image_id"].to_numpy())
    log_rows = []

    vae = build_surrogate_vae(s, res)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(20, s.vae_steps // 10), num_training_steps=s.vae_steps)
    for step, idx in enumerate(tqdm(_batches(len(x), s.vae_batch_size, s.vae_steps, gen), total=s.vae_steps,
                                    desc="backbone: VAE", disable=not show_progress)):
        post = vae.encode(x[idx]).latent_dist
        recon = vae.decode(post.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x[idx]) + s.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log_rows.append({"part": "vae", "step": step, "loss": loss.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        dist = torch.cat([vae.encode(x[i: i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    scale = float(1.0 / dist.std())
    vae.register_to_config(scaling_factor=scale)
    latents = dist * scale

    tokenizer, text_model, _ = text_components(cfg)
    encoder = TextEncoder(tokenizer, text_model, cfg.text.max_length)
    texts = [f"{cfg.data.generic_prompt}, {c}" for c in pool_caps]
    uniq = sorted(set(texts))
    table = torch.cat([encoder(uniq[i: i + 256]) for i in range(0, len(uniq), 256)])
    text_idx = torch.tensor([uniq.index(t) for t in texts])
    empty = encoder([EMPTY_PROMPT])[0]

    unet = build_surrogate_unet(s, latents.shape[-1])
    scheduler = noise_scheduler(s)
    opt = torch.optim.AdamW(unet.parameters(), lr=s.unet_lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, s.unet_steps // 10), num_training_steps=s.unet_steps)
    for step, idx in enumerate(tqdm(_batches(len(latents), s.unet_batch_size, s.unet_steps, gen), total=s.unet_steps,
                                    desc="backbone: UNet", disable=not show_progress)):
        text = table[text_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < 0.1  # keep an unconditional model for guidance
        text = torch.where(drop[:, None, None], empty, text)
        loss = diffusion_loss(unet, scheduler, latents[idx], text, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        log_rows.append({"part": "unet", "step": step, "loss": loss.item()})

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_model, tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = cfg.paths.backbone
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    write_csv(cfg.paths.run / "backbone_loss.csv", pd.DataFrame(log_rows))
    return out


def prepare_backbone(cfg: StudyConfig, show_progress: bool = True) -> str:
    """Stage `backbone`: pretrain the surrogate (or check that the pretrained backbone loads)."""
    from mvc.runtime import set_threads

    outputs = [cfg.paths.backbone] if cfg.backbone.kind == "surrogate" else []
    if not state.prepare(cfg, "backbone", outputs):
        return backbone_source(cfg)
    start = time.time()
    set_threads()
    if cfg.backbone.kind == "surrogate":
        pretrain_surrogate(cfg, show_progress)
    else:
        load_backbone(cfg.backbone.model, cfg.backbone.revision)
    state.mark_done(cfg, "backbone", time.time() - start, {"source": backbone_source(cfg)})
    return backbone_source(cfg)
