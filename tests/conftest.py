"""Shared fixtures: the smoke profile in a temporary work folder, run once per session up to any stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def smoke_config(tmp: Path, *overrides: str):
    from mvc.config import load_config

    return load_config(REPO / "params" / "smoke.yaml",
                       [f"runs_root={tmp / 'runs'}", f"reports_root={tmp / 'reports'}", "device=cpu", *overrides])


@pytest.fixture
def smoke(tmp_path):
    """A fresh smoke configuration whose runs/ and reports/ live in the test's temporary folder."""
    return smoke_config(tmp_path)


@pytest.fixture(scope="session")
def smoke_generated(tmp_path_factory):
    """The smoke study run through `generate` once per session (shared, read-only for the tests)."""
    from mvc import backbone, captioning, data, embed, finetune, generate

    cfg = smoke_config(tmp_path_factory.mktemp("smoke"))
    for stage in (data.prepare_dataset, captioning.caption_dataset, embed.embed_captions, backbone.prepare_backbone,
                  finetune.finetune, generate.generate_all):
        stage(cfg, show_progress=False)
    return cfg


def write_png(path: Path, rng: np.random.Generator, size: int = 20, fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory):
    """A random BLIP-2 built from a config and saved with save_pretrained (model and processor), CLIP's vocabulary."""
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              CLIPTokenizer, OPTConfig)

    from mvc.surrogate import clip_tokenizer

    folder = tmp_path_factory.mktemp("blip2")
    clip_tokenizer(77).save_pretrained(folder / "tok")
    tok = CLIPTokenizer.from_pretrained(folder / "tok")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tok.convert_tokens_to_ids("<image>")
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                     word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=49406, eos_token_id=49407,
                     pad_token_id=49407)
    config = Blip2Config(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                        "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                         qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                         "intermediate_size": 64, "encoder_hidden_size": 32, "vocab_size": 100},
                         text_config=text.to_dict(), num_query_tokens=4, image_token_index=image_token)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tok, num_query_tokens=4)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A Stable-Diffusion-shaped pipeline folder (the five parts, tiny, random), as `save_pretrained` writes it."""
    from diffusers import StableDiffusionPipeline

    from mvc.config import SurrogateConfig
    from mvc.surrogate import (build_surrogate_text_encoder, build_surrogate_unet, build_surrogate_vae, clip_tokenizer,
                               noise_scheduler)

    s = SurrogateConfig(vae_channels=[8, 16], unet_channels=[8, 16], text_hidden_size=16, text_layers=1, text_heads=2)
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe = StableDiffusionPipeline(vae=build_surrogate_vae(s, 16), text_encoder=build_surrogate_text_encoder(s),
                                   tokenizer=clip_tokenizer(77), unet=build_surrogate_unet(s, 8), scheduler=noise_scheduler(s),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
