"""Diffusion components and the training loss: loading a Stable Diffusion folder (hub id or local), the
backbone's text encoder alone, widening `conv_in` for image conditioning, VAE latents, the diffusion loss.

A backbone is the five parts a diffusers Stable Diffusion folder holds: `vae` (AutoencoderKL), `unet`
(UNet2DConditionModel), `text_encoder` (CLIPTextModel; the surrogate's MiniLM is a BertModel), `tokenizer`
(CLIPTokenizer; BertTokenizer) and `scheduler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mvc.io import atomic_dir
from mvc.paths import ModelFolderError, hub_error, resolve_path
from mvc.progress import quiet_library_bars
from mvc.surrogate import build_surrogate_text_parts

if TYPE_CHECKING:
    from mvc.config import StudyConfig

SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Backbone:
    """The five parts of a Stable Diffusion folder."""

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


def _saved_pooler(folder: Path) -> bool:
    """Whether a saved BERT's weights hold its pooler (True where they cannot be read here: transformers' default)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return True
    for file in files:
        with safe_open(str(file), "pt") as f:
            if any(k.startswith("pooler.") for k in f.keys()):
                return True
    return False


def load_backbone(source: str | Path, revision: str | None = None, field: str = "backbone.model",
                  dtype: torch.dtype = torch.float32, unet_dtype: torch.dtype | None = None) -> Backbone:
    """Load the five parts from a local diffusers folder or a hub id (cached, or online), in `dtype` (the UNet in
    `unet_dtype` when given)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    local = resolve_path(source)
    where = str(local) if local.exists() or str(source).startswith((".", "/", "~")) else str(source)
    if where == str(local):
        _check_folder(local, SUBFOLDERS, field)
    kw = {"revision": revision} if revision and where != str(local) else {}
    quiet_library_bars()
    try:
        # the class each folder's config names: CLIPTextModel and CLIPTokenizer in Stable Diffusion, BertModel and
        # BertTokenizer in the surrogate's MiniLM
        config = AutoConfig.from_pretrained(where, subfolder="text_encoder", **kw)
        # the surrogate's BERT is built with the pooler exactly where its folder holds one (MiniLM's does, the random
        # encoders' do not): no "missing" or "unexpected" load report in the logs and notebooks
        extra = {"add_pooling_layer": _saved_pooler(local / "text_encoder")} if config.model_type == "bert" else {}
        text_encoder = AutoModel.from_pretrained(where, subfolder="text_encoder", config=config, dtype=dtype, **extra,
                                                 **kw)
        return Backbone(
            vae=AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype, **kw),
            unet=UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=unet_dtype or dtype, **kw),
            text_encoder=text_encoder,
            # given the text encoder's config, AutoTokenizer does not look for a config.json in tokenizer/, which a
            # Stable Diffusion repository lacks (transformers 5.25 fails there offline from the hub cache)
            tokenizer=AutoTokenizer.from_pretrained(where, subfolder="tokenizer", config=text_encoder.config, **kw),
            scheduler=DDPMScheduler.from_pretrained(where, subfolder="scheduler", **kw),
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise hub_error(str(source), field, err) from err


def text_components(cfg: StudyConfig):
    """(tokenizer, text encoder, source) of the backbone, without loading its UNet or VAE."""
    if cfg.backbone.kind == "surrogate":
        tokenizer, model = build_surrogate_text_parts(cfg.backbone.surrogate, cfg.text.max_length)
        return tokenizer, model, "surrogate"
    from transformers import CLIPTextModel, CLIPTokenizer

    model, kw = cfg.backbone.model, ({"revision": cfg.backbone.revision} if cfg.backbone.revision else {})
    quiet_library_bars()
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


def set_attention_kernel(unet: torch.nn.Module, kernel: str) -> torch.nn.Module:
    """`classic`: diffusers' `AttnProcessor` (softmax(QK^T)V as three products); `sdpa`: diffusers' default. Only
    the forward changes: a saved folder is the same either way."""
    if kernel == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    return unet


def use_attention(unet: torch.nn.Module, cfg) -> torch.nn.Module:
    """The UNet with `backbone.surrogate.attention`'s kernel where the backbone is the surrogate; Stable Diffusion's
    UNet keeps diffusers' default (SDPA), which its real sizes need."""
    return set_attention_kernel(unet, cfg.backbone.surrogate.attention if cfg.backbone.kind == "surrogate" else "sdpa")


def diffusion_loss(unet, scheduler, latents: torch.Tensor, text: torch.Tensor, cond: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`|| target - eps_theta(z_t (+) cond, t, text) ||^2`, target eps or v as the scheduler predicts."""
    # drawn where the generator lives (a seeded CPU generator serves every device), then moved
    where = generator.device if generator is not None else latents.device
    noise = torch.randn(latents.shape, generator=generator, device=where, dtype=latents.dtype).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                      device=where).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    inp = noisy if cond is None else torch.cat([noisy, cond], dim=1)
    pred = unet(inp, t, encoder_hidden_states=text).sample
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    return F.mse_loss(pred.float(), target.float())


def memory_capacity_gib(device) -> float:
    """Memory free for a unit of work on `device`: the card's free memory, or the host's available memory."""
    import psutil

    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0] / 2**30
    return psutil.virtual_memory().available / 2**30


def vae_batch_size(vae, resolution: int, decode: bool = False) -> int:
    """Images per VAE encoding (or decoding) batch that fit a quarter of the memory free on the VAE's device
    (`mvc.footprint.encode_batch_size`): 64 for the surrogate, a few for SD 1.5's VAE at 512 px."""
    from mvc.footprint import DECODE, ENCODE, encode_batch_size

    return encode_batch_size(dict(vae.config), resolution, memory_capacity_gib(vae.device),
                             DECODE if decode else ENCODE, cap=4096 if decode else 64)


def encode_latents(vae, images, batch_size: int | None = None, part: str = "mode") -> torch.Tensor:
    """The VAE posterior's mode (or `part="std"`: its standard deviation), unscaled and in float32 on the CPU, of
    images in [-1, 1]: a tensor (N, 3, R, R), or anything sliced into one per batch (`DiffusionImages`, which
    loads each batch when it is encoded). Batches are bounded by the memory they need (`vae_batch_size`)."""
    def one(x: torch.Tensor) -> torch.Tensor:
        dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        return (dist.mode() if part == "mode" else dist.std).float().cpu()

    if len(images) == 0:
        raise ValueError("encode_latents: no images to encode")
    batch_size = batch_size or vae_batch_size(vae, int(images[0:1].shape[-1]))
    with torch.no_grad():
        return torch.cat([one(images[i: i + batch_size]) for i in range(0, len(images), batch_size)])


def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] encoded to the VAE posterior's mode and decoded: what the latent space keeps of them."""
    return decode_latents(vae, encode_latents(vae, images) * vae.config.scaling_factor)


def decode_latents(vae, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Images in [-1, 1] (float32, on the latents' device) of scaled latents, decoded in batches bounded by the
    memory they need (SD 1.5's decoder takes about 1 GiB per 512 px image)."""
    side = latents.shape[-1] * 2 ** (len(vae.config.block_out_channels) - 1)
    batch_size = batch_size or vae_batch_size(vae, side, decode=True)
    with torch.no_grad():
        return torch.cat([vae.decode((latents[i: i + batch_size] / vae.config.scaling_factor).to(vae.device, vae.dtype))
                          .sample.float().clamp(-1, 1).to(latents.device)
                          for i in range(0, len(latents), batch_size)])


def save_model(bb, unet, folder: Path, pipeline: str, extra: Callable[[Path], None] | None = None) -> None:
    """A folder that diffusers' `pipeline` class loads with `from_pretrained` (the model's `FineTunedModel.pipeline`:
    `StableDiffusionInstructPix2PixPipeline` for the image-conditioned models, `StableDiffusionPipeline` else);
    `extra(folder)` writes files of its own into it before it takes its name."""
    import diffusers

    pipe = getattr(diffusers, pipeline)(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=unet,
                                        scheduler=bb.scheduler, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if extra is not None:
            extra(tmp)
